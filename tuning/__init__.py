"""banana.tuning"""
