"""`spindle load`: the driver (`driver`), what it measures (`stats`), and its terminal UI (`ui`)."""
