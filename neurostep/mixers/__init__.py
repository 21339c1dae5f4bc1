"""neurostep.mixers"""
