// Drives keyplane with the official OpenAI Node SDK; prints one JSON object of what it saw.
// Usage: node client.mjs BASE_URL API_KEY
import OpenAI from "openai";

const [baseURL, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const msg = [{ role: "user", content: "hi from node" }];
const out = {};

const done = await client.chat.completions.create({ model: "gpt-4o-mini", messages: msg }).withResponse();
out.chat = done.data.choices[0].message.content;
out.chatUsage = done.data.usage.completion_tokens;
out.requestId = done.response.headers.get("x-request-id");
out.processingMs = done.response.headers.get("openai-processing-ms");

let text = "";
let usageChunks = 0;
for await (const chunk of await client.chat.completions.create({ model: "gpt-4o-mini", messages: msg, stream: true })) {
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  else usageChunks += 1;
}
out.stream = text;
out.strippedUsageChunks = usageChunks;

let usage = null;
for await (const chunk of await client.chat.completions.create({
  model: "gpt-4o-mini", messages: msg, stream: true, stream_options: { include_usage: true } })) {
  if (chunk.usage) usage = chunk.usage;
}
out.streamUsage = usage && usage.completion_tokens;

const emb = await client.embeddings.create({ model: "text-embedding-3-small", input: "abc", encoding_format: "float" });
out.embeddingLength = emb.data[0].embedding.length;

const resp = await client.responses.create({ model: "gpt-4o", input: "hello" });
out.responses = resp.output_text;
const events = [];
for await (const ev of await client.responses.create({ model: "demo-echo", input: "node stream", stream: true })) {
  events.push(ev.type);
}
out.responsesLastEvent = events[events.length - 1];

out.models = [];
for await (const m of client.models.list()) out.models.push(m.id);

try {
  await client.chat.completions.create({ model: "no-such-model", messages: msg });
} catch (e) {
  out.notFound = { status: e.status, code: e.code, name: e.constructor.name };
}
try {
  await new OpenAI({ baseURL, apiKey: "sk-kp-proj-nope", maxRetries: 0 }).models.list();
} catch (e) {
  out.badKey = { status: e.status, code: e.code, name: e.constructor.name };
}
try {
  const s = await client.chat.completions.create({
    model: "gpt-4o-mini", messages: msg, stream: true }, { headers: { "x-fake-die-after": "2" } });
  for await (const _ of s) { /* drain */ }
  out.midStream = "no error";
} catch (e) {
  out.midStream = { name: e.constructor.name, message: e.message };
}
console.log(JSON.stringify(out));
