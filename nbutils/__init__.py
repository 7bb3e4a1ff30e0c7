"""nbutils: the library behind the HRNet facial-landmark workbook notebooks."""
__version__ = "0.1.0"
