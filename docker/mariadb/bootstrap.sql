-- Run once over the socket after the data dir is created; @HOSTNAME@ is replaced by stack.sh.
-- root has no password over TCP. With skip-name-resolve a TCP client from 127.0.0.1 matches
-- only root@127.0.0.1, so that account is needed besides root@localhost; root@<hostname>
-- from mariadb-install-db is dropped because skip-name-resolve ignores it with a warning.
SET sql_log_bin = 0;
DROP USER IF EXISTS 'root'@'@HOSTNAME@';
CREATE USER IF NOT EXISTS 'root'@'localhost';
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1';
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
ALTER USER 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'localhost' WITH GRANT OPTION;
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
