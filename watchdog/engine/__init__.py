"""One cycle of the watchdog and the dispatch of its actions, over the ports."""
