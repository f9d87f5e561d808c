export const greet = (name) => `hello ${name}`
export default function unused() {
  return 1
}
