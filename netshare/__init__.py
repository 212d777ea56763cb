"""netshare: one Twisted service serving personnel, files and ttweet line protocols."""

__version__ = "0.1.0"
