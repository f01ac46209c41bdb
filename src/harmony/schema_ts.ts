/**
 * JSON Schema → the TypeScript-like text harmony puts in `type f = (_: …) => any;` (harmony.md §6). Reproduces
 * the reference renderer exactly, odd corners included (anyOf → any, `"x" | "y"[]`), because that is what the
 * model was trained on and what vLLM and OpenAI's server produce.
 */

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type Schema = { [key: string]: Json };

function isObject(value: unknown): value is Schema {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function hasNonEmptyEnum(schema: Schema): boolean {
  return Array.isArray(schema.enum) && schema.enum.length > 0;
}

/** Rule D: how a default value is written. */
function formatDefault(schema: Schema, quoteEnumStrings = false): string {
  const value = schema.default;
  if (typeof value === "string") {
    if (hasNonEmptyEnum(schema) && !quoteEnumStrings) return value;
    return quoteEnumStrings && hasNonEmptyEnum(schema) ? JSON.stringify(value) : `"${value}"`;
  }
  return JSON.stringify(value);
}

function variantType(variant: Json, indent: string): string {
  let text = toTypeScript(variant, indent + "   ");
  if (isObject(variant) && variant.nullable === true && !text.includes("null")) text += " | null";
  return text;
}

/** Converts a schema to its TypeScript text; `indent` is the current indentation. */
export function toTypeScript(schema: Json, indent = ""): string {
  if (!isObject(schema)) return "any";
  // 1. oneOf at this level.
  if (Array.isArray(schema.oneOf)) {
    let out = "";
    for (const variant of schema.oneOf) {
      out += `\n${indent} | ${variantType(variant, indent)}`;
      if (isObject(variant)) {
        const pieces: string[] = [];
        if (typeof variant.description === "string") pieces.push(variant.description);
        if ("default" in variant) pieces.push(`default: ${formatDefault(variant, true)}`);
        if (pieces.length > 0) out += ` // ${pieces.join(" ")}`;
      }
    }
    return out;
  }
  // 2. type is an array.
  if (Array.isArray(schema.type)) {
    const names = schema.type.filter((t): t is string => typeof t === "string");
    if (names.length > 0) return names.map((t) => (t === "integer" ? "number" : t)).join(" | ");
  }
  // 3. type is a string.
  if (typeof schema.type === "string") {
    switch (schema.type) {
      case "string": {
        if (hasNonEmptyEnum(schema)) {
          const members = (schema.enum as Json[]).filter((m): m is string => typeof m === "string");
          if (members.length > 0) return members.map((m) => `"${m}"`).join(" | ");
        }
        return "string";
      }
      case "number":
      case "integer":
        return "number";
      case "boolean":
        return "boolean";
      case "array":
        return "items" in schema ? `${toTypeScript(schema.items, indent)}[]` : "Array<any>";
      case "object":
        return objectType(schema, indent);
      default:
        return "any";
    }
  }
  // 5. Anything else (anyOf, allOf, $ref, const, bare enum, {}).
  return "any";
}

function objectType(schema: Schema, indent: string): string {
  let out = "";
  if (typeof schema.description === "string") out += `${indent}// ${schema.description}\n`;
  out += "{\n";
  const required = new Set(Array.isArray(schema.required) ? schema.required.filter((r) => typeof r === "string") : []);
  const properties = isObject(schema.properties) ? schema.properties : {};
  for (const [key, value] of Object.entries(properties)) {
    const prop: Schema = isObject(value) ? value : {};
    const optional = required.has(key) ? "" : "?";
    if (typeof prop.title === "string") out += `${indent}// ${prop.title}\n${indent}//\n`;
    if (!("oneOf" in prop) && typeof prop.description === "string") out += `${indent}// ${prop.description}\n`;
    if (Array.isArray(prop.examples) && prop.examples.length > 0) {
      out += `${indent}// Examples:\n`;
      for (const example of prop.examples) if (typeof example === "string") out += `${indent}// - "${example}"\n`;
    }
    if (Array.isArray(prop.oneOf)) {
      const variants = prop.oneOf;
      const firstDescription = isObject(variants[0]) ? variants[0].description : undefined;
      const describedAbove = typeof prop.description === "string" && prop.description !== firstDescription;
      if (describedAbove) out += `${indent}// ${prop.description}\n`;
      if ("default" in prop) out += `${indent}// default: ${formatDefault(prop)}\n`;
      out += `${indent}${key}${optional}:\n`;
      variants.forEach((variant, i) => {
        out += `${indent} | ${variantType(variant, indent)}`;
        const pieces: string[] = [];
        if (isObject(variant)) {
          const description = variant.description;
          if (
            typeof description === "string" && !(i === 0 && describedAbove) && description !== prop.description
          ) pieces.push(description);
          if ("default" in variant) pieces.push(`default: ${formatDefault(variant)}`);
        }
        if (pieces.length > 0) out += ` // ${pieces.join(" ")}`;
        out += "\n";
      });
      out += `${indent},\n`;
      continue;
    }
    let type = toTypeScript(prop, indent + "    ");
    if (prop.nullable === true && !type.includes("null")) type += " | null";
    out += `${indent}${key}${optional}: ${type},`;
    if ("default" in prop) out += ` // default: ${formatDefault(prop)}`;
    out += "\n";
  }
  return out + `${indent}}`;
}
