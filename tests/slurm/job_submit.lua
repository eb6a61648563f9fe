-- The test cluster's job submit filter: the partition `gresonly` takes GPUs only as --gres (some sites filter
-- one form of GPU request), every other partition takes both forms.
--
-- SLURM 22.05 hands the filter both forms alike: --gres=gpu:1 and --gpus-per-node=1 each arrive as
-- job_desc.tres_per_node = "gres:gpu:1" (job_desc.gres, its old name, says the same; --gpus=N is tres_per_job).
-- What tells them apart is around the request: the batch script's #SBATCH lines (job_desc.script), where submitit
-- writes its options, and the job's environment, where sbatch puts SLURM_GPUS_PER_NODE for --gpus-per-node (on the
-- command line, in an #SBATCH line or as SBATCH_GPUS_PER_NODE), never for --gres. sbatch also passes that variable
-- on from the shell it runs in, and a job that got its GPUs by --gpus-per-node has it: so from inside a job
-- (SLURM_JOB_ID set) only the script is taken as evidence.

local PARTITION = "gresonly"

-- whether `partitions` (a job's comma-separated list, or nil for the default one) names PARTITION
local function names_partition(partitions)
  for name in string.gmatch(partitions or "", "[^,]+") do
    if name == PARTITION then
      return true
    end
  end
  return false
end

-- whether the job asks for its GPUs by --gpus-per-node (see above)
local function asks_gpus_per_node(job_desc)
  if string.find(job_desc.script or "", "\n#SBATCH%s+%-%-gpus%-per%-node") then
    return true
  end
  local env = job_desc.environment
  return env ~= nil and env.SLURM_GPUS_PER_NODE ~= nil and env.SLURM_JOB_ID == nil
end

function slurm_job_submit(job_desc, part_list, submit_uid)
  local gpus = string.find(job_desc.tres_per_node or "", "gpu", 1, true)
  if gpus and names_partition(job_desc.partition) and asks_gpus_per_node(job_desc) then
    slurm.log_user("partition %s takes GPUs only as --gres=gpu:N, not as --gpus-per-node", PARTITION)
    return slurm.ERROR
  end
  return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  return slurm.SUCCESS
end
