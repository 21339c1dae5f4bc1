"""neurostep.neuro"""
