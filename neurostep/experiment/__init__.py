"""neurostep.experiment"""
