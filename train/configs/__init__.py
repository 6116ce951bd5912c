"""Packaged training presets: each module defines ``get_config()``."""
