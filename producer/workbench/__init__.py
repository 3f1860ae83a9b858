"""The workbench (`producer serve`): review, correct and learn in a browser."""
