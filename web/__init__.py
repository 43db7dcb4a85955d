"""The worker's HTTP views: ``/health``, ``/lag``, ``/lag/history`` and ``/dashboard``."""
