"""banana.targets: SoC facts as data, and one small backend class per way of running code."""
