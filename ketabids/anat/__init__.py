"""Pure imaging maths of the participant level: arrays and images in, arrays and images out.

conform -> bias correction and brain extraction -> registration -> segmentation ->
modulation and volumes. No Nipype here: the interfaces wrap these functions.
"""
