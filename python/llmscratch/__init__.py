"""llmscratch"""
