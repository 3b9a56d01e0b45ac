"""Drift monitoring on the capture store: is the field still what the adapter was calibrated on?

- `stats`: the three statistics (unknown rate vs the calibrated rejection rate, domain mix vs
  training, feature MMD vs the calibration images) on plain counts and arrays;
- `monitor`: reads a crop's captured records and images, runs the statistics with the
  package's calibration and reference features, and decides whether drift is significant;
- `report`: the JSON, the PNG a person reads and the HTML page that embeds it.
"""
