// One streamed tool call through the gateway with the official openai npm package.
// Usage: node tool_stream.mjs BASE_URL API_KEY MODEL
// Prints one JSON line: what the SDK saw chunk by chunk, and the completion its
// stream helper assembled from those chunks.
import OpenAI from "openai";

const [baseURL, apiKey, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30000 });

const stream = client.chat.completions.stream({
  model,
  messages: [{ role: "user", content: "What is the weather in Paris for 3 days?" }],
  tools: [
    {
      type: "function",
      function: {
        name: "get_forecast",
        description: "The weather forecast for a city",
        parameters: {
          type: "object",
          properties: { city: { type: "string" }, days: { type: "integer" } },
          required: ["city", "days"],
        },
      },
    },
  ],
});

const ids = new Set();
const models = new Set();
const toolDeltas = [];
for await (const chunk of stream) {
  ids.add(chunk.id);
  models.add(chunk.model);
  for (const choice of chunk.choices) {
    for (const delta of choice.delta?.tool_calls ?? []) toolDeltas.push(delta);
  }
}
const final = await stream.finalChatCompletion();
console.log(
  JSON.stringify({ ids: [...ids], models: [...models], toolDeltas, final }),
);
