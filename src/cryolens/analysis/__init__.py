"""cryolens.analysis"""
