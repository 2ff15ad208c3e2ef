// RAM and VRAM are separate budgets: a context's cost is checked against each on its own.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { addCosts, describeBudget, describeCost, isFree, overspent } from "../../runtime/model/memory-cost.js";
import { defaultMemoryBudget, defaultVramBudget } from "../../runtime/model/memory-budget.js";

const MiB = 2 ** 20, GiB = 2 ** 30;

describe("memory cost", () => {
  it("checks RAM and VRAM each against its own limit, never their sum", () => {
    const budget = { ram: 4 * GiB, vram: 20 * GiB };
    assert.equal(overspent({ ram: 3 * GiB, vram: 19 * GiB }, budget), undefined, "22 GiB in all fits: each currency is within its limit");
    assert.equal(overspent({ ram: 5 * GiB, vram: 1 * GiB }, budget), "ram");
    assert.equal(overspent({ ram: 1 * GiB, vram: 21 * GiB }, budget), "vram");
    assert.equal(overspent({ ram: 100 * GiB, vram: 100 * GiB }, { ram: 0, vram: 0 }), undefined, "0 is no limit");
    assert.equal(overspent({ ram: 100 * GiB, vram: 1 }, { ram: 0, vram: 1 * GiB }), undefined);
  });

  it("adds costs per currency and says them in words", () => {
    const sum = addCosts({ ram: MiB, vram: 2 * MiB }, { ram: 3 * MiB, vram: 0 });
    assert.deepEqual(sum, { ram: 4 * MiB, vram: 2 * MiB });
    assert.equal(isFree(addCosts()), true);
    assert.equal(isFree({ ram: 0, vram: 1 }), false);
    assert.equal(describeCost(sum), "4 MiB of RAM and 2 MiB of VRAM");
    assert.equal(describeCost({ ram: 0, vram: 512 * MiB }), "512 MiB of VRAM");
    assert.equal(describeBudget({ ram: 0, vram: GiB }), "VRAM 1024 MiB");
    assert.equal(describeBudget({ ram: 0, vram: 0 }), "none");
  });

  it("derives a VRAM budget from what the card has free after the model, only on a GPU", () => {
    assert.equal(defaultVramBudget(20 * GiB, true), Math.floor(18 * GiB));
    assert.equal(defaultVramBudget(20 * GiB, false), 0, "a CPU-only runtime has no VRAM budget");
    assert.equal(defaultVramBudget(0, true), 0, "a backend that reports nothing free sets no budget rather than refusing everything");
  });

  it("derives the RAM budget from the container limit, and none without one", async () => {
    assert.equal(await defaultMemoryBudget("/nonexistent-model", undefined), 0);
    assert.equal(await defaultMemoryBudget("/nonexistent-model", 10 * GiB), Math.floor(9 * GiB) - 256 * MiB);
  });
});
