"""Summary statistics of particle sets and density meshes: power spectra (auto and cross),
bispectra, and paired field metrics of a run against a reference."""

from cocasbi.stats.bispectrum import Bispectrum, bispectrum
from cocasbi.stats.power import CrossPowerSpectrum, PowerSpectrum, cross_power, power_spectrum

__all__ = ["Bispectrum", "CrossPowerSpectrum", "PowerSpectrum", "bispectrum", "cross_power",
           "power_spectrum"]
