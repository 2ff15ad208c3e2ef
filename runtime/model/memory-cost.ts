// What a context costs and what the runtime may spend, in two currencies that never mix: host RAM
// (bounded by the container's memory limit) and GPU VRAM (bounded by what the card has free once
// the model is loaded). A context with its KV cache offloaded costs mostly VRAM; adding the two
// into one number would let a pool overfill the card while RAM sat idle, or the reverse.

export interface MemoryCost {
  ram: number;
  vram: number;
}

export const NO_COST: MemoryCost = Object.freeze({ ram: 0, vram: 0 });

export function addCosts(...costs: MemoryCost[]): MemoryCost {
  return costs.reduce((sum, c) => ({ ram: sum.ram + c.ram, vram: sum.vram + c.vram }), { ram: 0, vram: 0 });
}

export function isFree(c: MemoryCost): boolean {
  return c.ram <= 0 && c.vram <= 0;
}

/** Whether any budget is set (a 0 in either currency is no limit on it). */
export function isLimited(budget: MemoryCost): boolean {
  return budget.ram > 0 || budget.vram > 0;
}

/** The currency `cost` overspends, or undefined when it fits (each limit on its own; 0: no limit). */
export function overspent(cost: MemoryCost, budget: MemoryCost): "ram" | "vram" | undefined {
  if (budget.ram > 0 && cost.ram > budget.ram) return "ram";
  if (budget.vram > 0 && cost.vram > budget.vram) return "vram";
  return undefined;
}

const mib = (bytes: number): string => `${Math.round(bytes / 2 ** 20)} MiB`;

/** "512 MiB of RAM and 2048 MiB of VRAM", leaving out a currency that is 0. */
export function describeCost(c: MemoryCost): string {
  const parts = [c.ram > 0 ? `${mib(c.ram)} of RAM` : "", c.vram > 0 ? `${mib(c.vram)} of VRAM` : ""].filter(Boolean);
  return parts.length ? parts.join(" and ") : "0 MiB";
}

/** The runtime's budget in words, for errors and logs: "RAM 4096 MiB, VRAM 20480 MiB". */
export function describeBudget(b: MemoryCost): string {
  const parts = [b.ram > 0 ? `RAM ${mib(b.ram)}` : "", b.vram > 0 ? `VRAM ${mib(b.vram)}` : ""].filter(Boolean);
  return parts.length ? parts.join(", ") : "none";
}
