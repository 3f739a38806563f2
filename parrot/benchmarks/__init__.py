"""Building benchmarks: extend short sessions to N turns with the asker (``parrot bench extend``)."""
