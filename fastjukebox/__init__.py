"""fastjukebox"""
