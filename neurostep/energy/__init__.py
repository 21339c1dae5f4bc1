"""neurostep.energy"""
