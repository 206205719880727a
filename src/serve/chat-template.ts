/**
 * How /v1/chat/completions turns messages into one prompt. The embedded model is a byte-level
 * language model trained on plain text: it has no chat template and no special tokens, so the
 * messages become plain lines, one per message, and the prompt ends where the assistant speaks:
 *
 *   system: You add numbers.
 *   user: 48+27=
 *   assistant:
 *
 * ("developer", OpenAI's newer name for the system role, is written as "system".) The reply is
 * what the model writes after "assistant:", up to the next line that starts a turn: generation
 * stops at "\nuser:" (and at "\nassistant:" or "\nsystem:", should the model carry the dialogue on
 * by itself), on top of the client's own stop strings. A checkpoint with a chat template of its
 * own (a tokenizer_config.json chat_template) would want that template here instead; none of the
 * checkpoints this server loads yet needs one.
 *
 * @example
 * renderChat([{ role: 'user', content: 'Hi' }])   // 'user: Hi\nassistant:'
 */
import type { ChatMessage } from './schemas.js';

/** Where a reply ends: the start of another turn. */
export const CHAT_STOPS = ['\nuser:', '\nassistant:', '\nsystem:'];

/** The prompt for `messages` (see the file comment for the template). */
export function renderChat(messages: readonly ChatMessage[]): string {
  const lines = messages.map((m) => `${m.role === 'developer' ? 'system' : m.role}: ${contentText(m.content)}`);
  return `${lines.join('\n')}\nassistant:`;
}

/** A message's content as text: a string, or its text parts joined. */
function contentText(content: ChatMessage['content']): string {
  return typeof content === 'string' ? content : content.map((p) => p.text).join('');
}
