export const PREFIX = '>>';
export default function shout(text) {
  return PREFIX + text.toUpperCase();
}
