"""Demos built on the public APIs only (the live colonoscopy video demo lands with the runtime issue)."""
