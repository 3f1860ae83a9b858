"""The workbench's pages, one module per family: each holds its ``routes``."""
