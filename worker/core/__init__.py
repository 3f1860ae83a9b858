"""The torch-free core: settings, errors, label sets, the message contract, redaction."""
