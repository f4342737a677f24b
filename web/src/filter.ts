// The run filter box's errors. SearchRuns answers a filter it cannot parse with
// INVALID_ARGUMENT, message "filter: column N: <what>" and a BadRequest violation
// {field: "filter", description: "column N: <what>"} (services/tracker/store/search.py);
// N counts characters from 1, the end of the text being length + 1.

import { ApiError } from "./api";

export interface FilterError {
  message: string;
  column: number | null; // 1-based, null when the server named none
}

const COLUMN = /^column (\d+): ([\s\S]*)$/;

/** The filter's error in an ApiError, null when the error is about something else. */
export function filterError(err: unknown): FilterError | null {
  if (!(err instanceof ApiError) || err.code !== 3) return null;
  const violation = err.violations.find((v) => v.field === "filter" || v.field === "order_by");
  const text = violation?.description ?? err.message.replace(/^(filter|order_by): /, "");
  if (!violation && !/^filter\b/.test(err.message)) return null;
  const m = COLUMN.exec(text);
  // order_by's errors carry column 1 as a placeholder: it is not a place in the filter.
  if (m && violation?.field !== "order_by") return { message: m[2], column: Number(m[1]) };
  return { message: m ? m[2] : text, column: null };
}

/**
 * The filter's text with a caret under the error's column, for a <pre> under the box:
 * ["params.x = 1", "           ^"]. A column past the end points just after the text.
 */
export function caretLines(text: string, column: number): [string, string] {
  const at = Math.max(1, Math.min(column, text.length + 1));
  // Tabs would break the alignment of a monospace caret line; show them as one space each.
  return [text.replace(/\t/g, " "), " ".repeat(at - 1) + "^"];
}

/** The 0-based [start, end) to select in the box: the word the error starts at. */
export function errorSelection(text: string, column: number): [number, number] {
  const start = Math.max(0, Math.min(column - 1, text.length));
  const rest = /^\S*/.exec(text.slice(start))?.[0] ?? "";
  return [start, start + rest.length];
}
