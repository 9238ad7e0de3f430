/**
 * Which default label set a text gets: 正面/负面 when it is mostly Chinese, positive/negative
 * otherwise. "Mostly" = at least as many Han characters as Latin letters, so a Chinese sentence
 * with an English brand name stays Chinese, and English with one 好 stays English.
 */
export type Language = 'zh' | 'en'

export function detectLanguage(text: string): Language {
  let han = 0
  let latin = 0
  for (const ch of text) {
    if (/\p{Script=Han}/u.test(ch)) han++
    else if (/[A-Za-z]/.test(ch)) latin++
  }
  return han > 0 && han * 3 >= latin ? 'zh' : 'en'
}
