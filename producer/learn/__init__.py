"""Label vectors learned from reviewers' corrections (`producer relabel --learn`)."""
