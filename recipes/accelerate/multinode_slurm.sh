#!/usr/bin/env bash
# Multi-node pretraining under SLURM: one task per node, each starting torchrun with one process
# per GPU; rank 0's node is the rendezvous. Submit with: sbatch recipes/accelerate/multinode_slurm.sh
#SBATCH --job-name=onetower
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
MASTER_PORT=${MASTER_PORT:-29500}
RECIPE=${RECIPE:-recipes/beit3_like.py}

# FSDP2 (drop these lines for DDP): what `accelerate launch --config_file
# recipes/accelerate/fsdp2.yaml` would set, given to torchrun directly.
export ACCELERATE_USE_FSDP=true FSDP_VERSION=2 FSDP_AUTO_WRAP_POLICY=TRANSFORMER_BASED_WRAP \
    FSDP_TRANSFORMER_CLS_TO_WRAP=Block FSDP_RESHARD_AFTER_FORWARD=true \
    FSDP_STATE_DICT_TYPE=SHARDED_STATE_DICT ACCELERATE_MIXED_PRECISION=bf16

srun --kill-on-bad-exit=1 bash -c "python -m torch.distributed.run \
    --nnodes $SLURM_NNODES --nproc_per_node $GPUS_PER_NODE --node_rank \$SLURM_NODEID \
    --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR:$MASTER_PORT \
    $RECIPE train.mixed_precision=bf16 run.output_dir=runs/\$SLURM_JOB_NAME $*"

# The same with accelerate launch, per node (inside the srun):
#   accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_machines $SLURM_NNODES \
#     --num_processes $((SLURM_NNODES * GPUS_PER_NODE)) --machine_rank $SLURM_NODEID \
#     --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT $RECIPE ...
