export const double = (n) => n * 2
export const triple = (n) => n * 3
export const half = (n) => n / 2
export default (n) => n + n
