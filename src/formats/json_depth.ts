/** Bounds on client-controlled structure, measured without recursion (a hostile document may nest 100k deep). */

/** The nesting depth of a JSON value (a scalar is 0, `[]` and `{}` are 1), or `limit + 1` once it exceeds `limit`. */
export function jsonDepth(value: unknown, limit: number): number {
  let deepest = 0;
  const stack: [unknown, number][] = [[value, 0]];
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (node === null || typeof node !== "object") continue;
    const here = depth + 1;
    if (here > limit) return limit + 1;
    if (here > deepest) deepest = here;
    for (const child of Array.isArray(node) ? node : Object.values(node)) stack.push([child, here]);
  }
  return deepest;
}

/** Appends `items` to `target` one by one (`push(...items)` overflows the stack beyond ~100k items). */
export function pushAll<T>(target: T[], items: readonly T[]): T[] {
  for (let i = 0; i < items.length; i++) target.push(items[i]);
  return target;
}
