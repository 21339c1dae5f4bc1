"""neurostep.ssm"""
