"""Summary statistics of particle sets and density meshes: power spectra (auto and cross)."""

from cocasbi.stats.power import CrossPowerSpectrum, PowerSpectrum, cross_power, power_spectrum

__all__ = ["CrossPowerSpectrum", "PowerSpectrum", "cross_power", "power_spectrum"]
