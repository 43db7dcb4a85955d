-- Run once over the socket after the data dir is created (root@localhost has no password
-- after --initialize-insecure). root has no password over TCP either: with skip-name-resolve
-- a TCP client from 127.0.0.1 matches only root@127.0.0.1. aesop_sha2 is a replication user
-- that logs in with MySQL 8's default caching_sha2_password.
SET sql_log_bin = 0;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED WITH caching_sha2_password BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'aesop_sha2'@'%' IDENTIFIED WITH caching_sha2_password BY 'aesop-sha2';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, SELECT ON *.* TO 'aesop_sha2'@'%';
FLUSH PRIVILEGES;
