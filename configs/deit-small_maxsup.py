# DeiT-Small with MaxSup (alpha 0.1 -> 0.2), the official DeiT recipe without
# distillation, total batch 1024 = 8 GPUs x 128.  Table 5; paper: 76.49.
#   bash tools/dist_train.sh configs/deit-small_maxsup.py 8
# The recipe and its CE / LS / OLS / Zipf-LS siblings: configs/deit/.
_base_ = './deit/deit-small_8xb128-maxsup_in1k.py'
