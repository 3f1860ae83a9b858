"""The results database: tables, the worker's and the producer's calls, migrations."""
