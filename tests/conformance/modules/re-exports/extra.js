export const extraValue = 'extra'
export default 'not re-exported by export *'
