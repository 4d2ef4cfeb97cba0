"""Process machinery: the check scheduler, the liveness watchdog, stop signals, bounded file
reading and the scenario file of the simulated world."""
