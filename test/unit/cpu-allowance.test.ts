// The CPUs a runtime's contexts may keep busy by default (runtime/model/cpu-allowance.ts).
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { cgroupCpuLimit, cpuAllowance } from "../../runtime/model/cpu-allowance.js";

const files = (f: Record<string, string>) => async (name: string) => {
  if (name in f) return f[name]!;
  throw Object.assign(new Error(`ENOENT: ${name}`), { code: "ENOENT" });
};

describe("cpu allowance", () => {
  it("reads the cgroup v2 quota, the v1 quota, or none", async () => {
    assert.equal(await cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu.max": "200000 100000\n" })), 2);
    assert.equal(await cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu.max": "max 100000\n" })), undefined);
    assert.equal(await cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n" })), 1.5);
    assert.equal(await cgroupCpuLimit(files({ "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n" })), undefined);
    assert.equal(await cgroupCpuLimit(files({})), undefined);
  });

  it("is the whole CPUs of the quota, never more than the affinity mask allows, at least 1", async () => {
    // A pod limited to 2 CPUs on a 64-core node: 2 threads, not 64.
    assert.equal(await cpuAllowance(files({ "/sys/fs/cgroup/cpu.max": "200000 100000" }), 64), 2);
    assert.equal(await cpuAllowance(files({ "/sys/fs/cgroup/cpu.max": "250000 100000" }), 64), 2);
    assert.equal(await cpuAllowance(files({ "/sys/fs/cgroup/cpu.max": "50000 100000" }), 64), 1);
    assert.equal(await cpuAllowance(files({ "/sys/fs/cgroup/cpu.max": "800000 100000" }), 4), 4);
    assert.equal(await cpuAllowance(files({}), 6), 6);
  });
});
