-- The test cluster's job submit filter: the partition `gresonly` takes GPUs only as --gres (some sites filter
-- one form of GPU request), every other partition takes both forms.
function slurm_job_submit(job_desc, part_list, submit_uid)
  return slurm.SUCCESS
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
  return slurm.SUCCESS
end
