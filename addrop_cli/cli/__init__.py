"""The ``addrop`` command line: one thin module per command, each parsing, validating and calling the
library; ``app`` assembles them."""
