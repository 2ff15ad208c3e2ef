// A session's chat history as the API gives it back (`GET /v1/sessions/{ns}/{name}/messages`): the
// inverse of parseMessages, in the shape OpenAI clients send, so a chat UI can reload what it shows.
import type { ChatHistoryItem } from "node-llama-cpp";
import type { ConversationMessage } from "./runtime-api.js";

// LlamaText JSON (a system prompt may be one) is an array of strings and special tokens: its text.
const plain = (t: unknown): string => typeof t === "string" ? t : Array.isArray(t) ? t.filter((x): x is string => typeof x === "string").join("") : "";

export function conversationMessages(history: readonly ChatHistoryItem[]): ConversationMessage[] {
  return history.map((item): ConversationMessage => {
    switch (item.type) {
      case "system": return { role: "system", content: plain(item.text) };
      case "user": return { role: "user", content: item.text };
      // Function calls and segments (a model's thoughts) are not the answer a user was shown.
      default: return { role: "assistant", content: item.response.filter((r): r is string => typeof r === "string").join("") };
    }
  });
}
