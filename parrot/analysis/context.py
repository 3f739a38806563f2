"""A rule-based detector of context-dependent user queries.

A follow-up query is *context dependent* when it cannot be understood without the earlier turns.
Parrot counts such queries per session (the paper reports 3.42 per session for Parrot-40K) and
picks them for CaPO. ``is_context_dependent`` finds three kinds of cues; it is deliberately
precision-first (a cue must be fairly unambiguous) and is meant as the cheap first stage before a
judge model, not as ground truth.

Rules
=====
**First turns.** With ``history_len == 0`` nothing is dependent, whatever the text. An empty
query or one made only of pleasantries ("thanks!", "great, thank you") is never dependent.

**Own material.** Pasted material is not searched for cues: fenced code blocks, inline code,
quoted spans ("...", '...', “...”), text after a colon ("Summarize this: ..."; a one-word label
such as "Note:" or "Question:" is not a colon split), and text after the first line break when
that rest is 80 characters or more and either looks like code or the first line points at it
(this, these, following, below, here, attached, given). A fenced code block always counts as
long. A demonstrative with material within four words after it, or anywhere when the material
is long, is cataphoric ("Fix this code: ...", "What does this word mean: 'x'"); when the
material is long, third-person pronouns in the instruction are taken to point into it
("Retell this story from her perspective.\\n\\n<story>"). Only the first 300 tokens of the
instruction are examined.

**anaphora** (pronouns, demonstratives and definite descriptions pointing back):
- *it / its / itself*, except dummy "it": extraposition with a listed adjective or noun and a
  complement ("it is important to/that", "is it possible to", "would it be a good idea to",
  "is it safe for kids to", "is it worth learning"), "it takes/costs ... to", "does it
  matter/help/make sense if", weather and time ("it is raining", "what time is it"), "it
  seems/turns out/appears that", "when it comes to", "what is it like to", "it has been (a
  while|years)", "make it to/through", "believe it or not", "as it turns out", "how is it
  going". "Is it possible?" (no complement) *is* a cue.
- *they / them / their / theirs / themselves*, *he / she / him / her / his / hers*.
- *this / these* (not before time words: "this year", "these days"; not cataphoric),
  *those* (not generic: "those who/which/that/of/with ..."), and *that* only in demonstrative
  positions: starting a sentence ("That doesn't work"), after an auxiliary that starts a
  sentence or follows a question word ("Is that true?", "Why is that?", "How much does that
  cost?"), after a preposition ("about that", "like that", "in that case"), before a listed
  noun ("that code", "that one"), after a listed action verb when no clause follows ("explain
  that", "do that in Python"), or at the end of a clause. Complementizer and relative *that*
  ("I think that ...", "a function that ...", "so that", "such that", "that is,") and degree
  *that* ("that hard") are not cues.
- Locally bound pronouns are not cues. *it/this/that* are bound by an earlier noun phrase of
  the same query introduced by a/an/my/our/some/any/one, by a proper noun (a capitalized word
  that is not sentence-initial and not a common word), or by the topic of "what is X",
  "explain/define/describe X", "about X", when a clause boundary (punctuation or and/but/so/
  because/when/if/which/how/...) separates it from the pronoun: "I have a list of numbers; how
  do I sort it?", "Write a function and test it", "What is recursion and when is it useful?".
  Possessives and reflexives need no boundary ("a dragon who loses its fire"). Nouns that are
  *about* something (example, name, title, summary, version, way, ...) never bind: "Give an
  example of how to use it" stays a cue. *they/them/these/those* are bound the same way by a
  plural (a bare plural noun, an irregular plural, a numeral or some/many/several + noun, a
  proper noun) or, as singular "they", by a person noun; *he/she* by any earlier proper noun
  or person noun (friend, boss, teacher, ...), boundary or not.
- Phrases: "the above", "the aforementioned", "the former/latter" (as pronouns), "the first /
  second / ... / last / other one" (not "the first one to/who"), "which one" (not when options
  follow with "or"), "the same" (not "the same as", "at the same time"), "the rest" (alone),
  "such a case/thing/...", "there" as a place back-reference ("get there", not existential
  "there is", "is there", nor "hi there", "out there"), "the ... above/mentioned" closing a
  noun phrase ("the steps above").
- Definite artifacts after an edit verb: "rewrite/summarize/translate/fix/explain/... the
  (adjective) story/code/email/list/table/..." unless "of/about/that/for/..." or material follows
  ("Summarize the story in three bullets", but not "Summarize the story of Cinderella").

**ellipsis** (fragmentary follow-ups):
- Openers (after lead-ins such as please / can you / ok / now): "what about", "how about",
  "what if" (15 words at most), "and/or/but/so/also ..." (8 words at most), "same for/with/
  but", "now in/for/as/do/make/translate/..." (an edit of the last answer), "continue", "go
  on", "keep going", "go ahead", "next", "more", "another", "one more", "anything else", "what
  else", "any other(s)" (these last ones 6 words at most), "make/keep/turn/change/put/format
  it|them|this|that ..." ("make it shorter").
- Anywhere: "tell me more", "more details", "in more detail", "explain further/more", "go
  deeper", "be more specific", "try again"/"do it again", "go ahead", "elaborate"/"expand"
  without an object ("Can you elaborate?", "expand on that"), "a/some/3 similar X" without
  "to" ("3 similar examples"), "again" in a query of 6 words at most, a final "instead", a
  final "too" or "as well" (10 words at most).
- Edit verbs without an object ("Translate to French", "Rewrite as a haiku", "Summarize in 3
  bullet points", "Explain like I'm five", "Continue"): an edit verb first (after the lead-ins),
  then the end or a preposition or adverb, 10 words at most and no question word after it.
- Short fragments: 3 words at most with no verb ("In Python?", "Why not?", "Shorter.", "Yes
  please", "Examples?").

**explicit_reference** (naming the earlier turns): "you said/mentioned/wrote/suggested/...",
"you forgot/missed/didn't ...", "did you say/mean/use ...", "your (own|previous|...) answer/
code/list/..." (not after write/format/give/provide/keep/limit/..., which describe the answer to
come), "(the|your) previous/last/earlier/above/original ... answer/response/code/...", "as
(you|I|we) said/mentioned ...", "as mentioned", "mentioned/described/listed above/earlier/
before", "earlier in our conversation", "go back to", "where you left off".

Known limits: other definite noun phrases ("the second point", "the triangle") are not cues;
implicit edits with an object ("Add error handling") and comparatives ("a better way") are
missed; a noun phrase in the query can wrongly bind a pronoun that points back. On MT-Bench's
second turns it flags about three in five; on its first turns (read as if they were follow-ups)
about one in sixteen, mostly "your answer" in instructions. Measure against a judge before
trusting the numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ANAPHORA = "anaphora"
ELLIPSIS = "ellipsis"
EXPLICIT_REFERENCE = "explicit_reference"
KINDS: tuple[str, ...] = (ANAPHORA, ELLIPSIS, EXPLICIT_REFERENCE)

MAX_WORDS = 300
LONG_MATERIAL_CHARS = 80
_MATERIAL = "<material>"


@dataclass(frozen=True)
class ContextVerdict:
    dependent: bool
    kinds: list[str] = field(default_factory=list)  # subset of KINDS, in KINDS order
    cues: list[str] = field(default_factory=list)  # the matched words, in order of discovery


def is_context_dependent(query: str, history_len: int = 1) -> ContextVerdict:
    """Whether ``query`` needs the earlier turns to be understood (rules in the module docstring).

    ``history_len`` is the number of earlier turns; 0 means a first turn, never dependent.
    """
    if history_len <= 0 or not query.strip():
        return ContextVerdict(False)
    text = _Text.parse(query)
    if not text.words or all(w in _PLEASANTRIES for w in text.words if w[0].isalnum()):
        return ContextVerdict(False)
    found: dict[str, list[str]] = {k: [] for k in KINDS}
    _anaphora(text, found[ANAPHORA])
    _ellipsis(text, found[ELLIPSIS])
    _explicit(text, found[EXPLICIT_REFERENCE])
    kinds = [k for k in KINDS if found[k]]
    cues: list[str] = []
    for k in KINDS:
        for cue in found[k]:
            if cue not in cues:
                cues.append(cue)
    return ContextVerdict(bool(kinds), kinds, cues)


# ---------------------------------------------------------------------------- word lists

_PLEASANTRIES = frozenset(
    "thanks thank you thx ty so much very a lot hi hello hey bye goodbye good great cool nice awesome "
    "perfect wow ok okay lol haha excellent amazing wonderful fantastic appreciate cheers".split()
)
_IT = frozenset({"it", "its", "itself"})
_POSSESSIVE_OR_REFLEXIVE = frozenset({"its", "itself", "their", "theirs", "themselves"})
_THEY = frozenset({"they", "them", "their", "theirs", "themselves"})
_PERSON = frozenset({"he", "him", "his", "himself", "she", "her", "hers", "herself"})
_TIME_WORDS = frozenset(
    "year years week weekend month morning afternoon evening night time summer winter spring fall autumn "
    "season semester quarter century decade day days moment tonight today christmas holiday".split()
)
_WH = frozenset({"what", "why", "how", "where", "when", "who", "which", "whose", "whom"})
_AUX = frozenset(
    "is are was were do does did can could would will should shall may might must has have had am".split()
)
_BOUNDARY_WORDS = frozenset(
    "and but or so because since when whenever while if then that which who whom where how what why after "
    "before until unless although though whether once as".split()
)
_PUNCT_BOUNDARY = frozenset(",;.!?:()")
_DETS_SINGULAR = frozenset({"a", "an", "my", "our", "some", "any", "one"})
_DETS_PLURAL = frozenset(
    "some many several few both all my our two three four five six seven eight nine ten".split()
)
_META_NOUNS = frozenset(
    "example examples name names title titles summary summaries version versions explanation explanations "
    "description descriptions way ways idea ideas overview analogy comparison comparisons translation review "
    "critique bit lot couple few little tip tips reason reasons detail details question questions word words "
    "sentence sentences paragraph point points alternative alternatives pros cons difference differences "
    "similarity similarities step steps advantage advantages disadvantage disadvantages benefit benefits "
    "feedback opinion thoughts suggestion suggestions".split()
)
_PERSON_NOUNS = frozenset(
    "friend friends mother father mom dad mum son daughter brother sister husband wife boyfriend girlfriend "
    "partner boss manager colleague coworker teacher professor student child kid baby man woman boy girl "
    "doctor author character president king queen customer client user person guy lady neighbor neighbour "
    "roommate grandma grandpa grandmother grandfather uncle aunt cousin nephew niece employee player writer "
    "actor actress singer artist patient candidate applicant landlord tenant coach mentor parent".split()
)
# Closed-class words: they end a noun phrase.
_FUNCTION_WORDS = frozenset(
    "i a an the this that these those it its they them their he she him her his we us our you your my me "
    "what why how where when who which whose whom is are was were be been do does did can could would will "
    "should shall may might must has have had am and but or so if then not there here all any some in on at "
    "for to from of with by about as into".split()
)
# ... and, with common verbs and interjections, words a capitalized token is not a proper noun for.
_COMMON = _FUNCTION_WORDS | frozenset(
    "please write tell give make explain describe list name show create generate compose draft summarize "
    "rewrite translate help let lets find provide suggest compare calculate compute solve define imagine act "
    "pretend consider now also ok okay yes no sure thanks thank hi hello hey great good nice well one two".split()
)
_S_WORDS = frozenset(
    "is was has does this his its thus plus yes us as always perhaps less unless across whereas various "
    "previous famous serious obvious news series species analysis basis thesis process access success class "
    "business address mass glass boss loss kiss miss pass less bus gas status campus bonus virus focus "
    "canvas alias atlas chaos lens physics mathematics economics politics ethics".split()
)
_IRREGULAR_PLURALS = frozenset("children people men women mice teeth feet geese data media criteria".split())
_BACKREF_NOUNS = frozenset(
    "one ones part code function answer example list idea approach method solution story poem point step "
    "version sentence paragraph text word term thing things stuff question option script program article "
    "email letter book movie song topic concept plan recipe design table formula equation number result "
    "case issue problem error bug line section chapter name place city country person guy character game "
    "product company model tool library package command query file link website site quote phrase joke "
    "show episode category strategy argument claim statement definition theory rule law policy change "
    "feature output reply response explanation draft outline summary title slogan description prompt "
    "style tone format process algorithm loop variable class api app application page image picture "
    "diagram chart graph column row value field key item task goal dish meal drink restaurant hotel trip "
    "route author paper study source reference video list".split()
)
_PREPS = frozenset(
    "about of on with like for from to into at by than after before without besides behind beyond under "
    "over against despite regarding upon through via".split()
)
_THAT_VERBS = frozenset(
    "do does did explain elaborate repeat rewrite change fix try use mean meant write translate expand "
    "summarize clarify continue show make describe check verify improve apply implement add remove convert "
    "modify adjust edit shorten simplify undo keep put turn give send run test compare justify reword "
    "rephrase format understand get see redo".split()
)
_THAT_VERB_NEXT = frozenset(
    "again too instead in into as for with to using but and so please more differently better shorter "
    "longer simpler step now here".split()
)
_COMPLEMENTIZER_BEFORE = frozenset(
    "think know believe say said says mean means ensure sure show prove realize feel hope guess suppose "
    "assume notice found given so such now except fact claim claims true possible likely clear obvious "
    "idea chance possibility evidence proof news sign reason is was".split()
)
_DEGREE_NEXT = frozenset(
    "much many far long big hard bad good easy difficult important simple different expensive often fast "
    "slow high low old young small large bad serious".split()
)
_EXTRAPOSITION = (
    "possible|impossible|true|false|safe|unsafe|ok|okay|normal|necessary|unnecessary|important|better|best|"
    "worse|worst|worth|worthwhile|hard|harder|easy|easier|difficult|common|uncommon|rare|usual|unusual|legal|"
    "illegal|bad|good|wise|unwise|advisable|recommended|healthy|unhealthy|wrong|right|fine|feasible|realistic|"
    "likely|unlikely|probable|essential|crucial|vital|helpful|useful|appropriate|inappropriate|acceptable|"
    "reasonable|ethical|unethical|rude|polite|fair|unfair|fun|dangerous|risky|simple|convenient|beneficial|"
    "advantageous|preferable|allowed|permitted|permissible|customary|mandatory|required|enough|sufficient|"
    "known|said|believed|thought|clear|obvious|evident|apparent|interesting|surprising|strange|odd|weird|"
    "funny|sad|cheaper|faster|smarter|cheap|expensive|healthier|safer|typical|natural|logical|inevitable|"
    "critical|problematic|challenging|tough|quicker|idea|case|shame|pity|mistake|problem|time|must|wonder|"
    "sin|crime|pleasure|tradition|practice|rule|requirement|fact|estimated|reported|rumored|claimed|"
    "considered|noted|necessary|time-consuming|costly|challenging"
)
_COMPLEMENT = r"(?:to|that|if|whether|when|how|why|what|for (?:\S+ ){1,4}to)"
_COPULA = (
    r"(?:is|was|will be|would be|could be|might be|may be|can be|should be|must be|has been|had been|"
    r"is not|was not|would not be|will not be|becomes|became|seems|seemed|appears|appeared|feels|felt|"
    r"looks|looked|sounds|gets|got)"
)
_IT_DUMMY_RIGHT = [
    re.compile(rf"^ {_COPULA}(?: \S+){{0,3}}? (?:{_EXTRAPOSITION})(?: \S+)? {_COMPLEMENT}\b"),
    re.compile(r"^ (?:takes|took|will take|would take|costs|cost|will cost|would cost)(?: \S+){0,5}? (?:to|for)\b"),
    re.compile(
        r"^ (?:matters|helps|hurts|pays|makes sense|made sense|makes a difference|made a difference|would help|"
        r"would hurt|would make sense|will help)(?: \S+){0,3}? (?:to|if|whether|that|when)\b"
    ),
    re.compile(r"^ (?:turns out|turned out|occurred to|seems like|seems that|seems as|seemed like|appears that)\b"),
    re.compile(
        r"^ (?:is |was |will be |is going to |was going to |will |going to |might |may )?"
        r"(?:raining|snowing|sunny|cloudy|windy|foggy|chilly|freezing|humid|pouring|rain|snow|dark outside|"
        r"hot outside|cold outside|late|\d)"
    ),
    re.compile(r"^ (?:has|had|is) been (?:a while|a long time|ages|years|months|weeks|days|forever|so long|too long|\d+)\b"),
    re.compile(r"^ or not\b"),  # believe it or not
]
_IT_DUMMY_INVERTED_LEFT = re.compile(r"(?:^| )(?:is|was|will|would|could|might|may|can|should|must|does|did|do)(?: not)?$")
_IT_DUMMY_INVERTED_RIGHT = [
    re.compile(rf"^(?: be| not be| not)?(?: \S+){{0,3}}? (?:{_EXTRAPOSITION})(?: \S+)? {_COMPLEMENT}\b"),
    re.compile(
        r"^ (?:matter|help|hurt|pay|make sense|make a difference|take|cost)(?: \S+){0,5}? "
        r"(?:to|if|whether|that|when|for)\b"
    ),
    re.compile(r"^(?: really| even| still)? worth (?:\S+ing|it to)\b"),
    re.compile(r"^(?: going to| be| ever)? (?:rain|snow|raining|snowing|sunny|cloudy|windy|hot|cold|warm|freezing|humid)\b"),
]
_IT_DUMMY_LEFT = [
    (re.compile(r"(?:^| )what (?:time|day|date|year|month|season) (?:is|was)$"), None),
    (re.compile(r"(?:^| )how is$"), re.compile(r"^ going\b")),
    (re.compile(r"(?:^| )when$"), re.compile(r"^ comes to\b")),
    (
        re.compile(r"(?:^| )what (?:is|was|would|will)$"),
        re.compile(r"^(?: be)? like (?:to|being|living|working|having|in|for)\b"),
    ),
    (
        re.compile(r"(?:^| )(?:make|made|makes|making)$"),
        re.compile(r"^ (?:to (?!the point)|through|on time|in time|home|out alive)"),
    ),
    (re.compile(r"(?:^| )believe$"), re.compile(r"^ or not\b")),
    (re.compile(r"(?:^| )as$"), re.compile(r"^ (?:turns out|happens|were)\b")),
]

_EDIT_VERBS = frozenset(
    "rewrite rephrase reword revise redo shorten lengthen simplify summarize summarise condense expand "
    "elaborate continue translate convert reformat format fix correct improve polish refine edit explain "
    "clarify repeat retry try finish complete proofread optimize refactor extend modify update adapt tweak "
    "paraphrase restate retell rename".split()
)
_EDIT_NEXT = frozenset(
    "to in into as for with using without like but so please again more further differently better briefly "
    "concisely formally informally instead now then by from at . ? ! step".split()
)
_LEAD_INS = frozenset(
    "please can could would will you ok okay great thanks thank now then well alright sure yes no hmm oh "
    "good nice cool perfect also just , . !".split()
)
_VERBS = _AUX | _EDIT_VERBS | frozenset(
    "write tell give make show list name define describe compare calculate compute solve create generate "
    "compose draft find suggest recommend provide help let go get know think want need like use run see "
    "say mean add remove change put keep turn do does did".split()
)

_EXPLICIT_PATTERNS = [
    re.compile(
        r"\byou (?:just |previously |already |earlier |have |had )?(?:said|mentioned|wrote|written|gave|given|"
        r"provided|suggested|listed|described|explained|told|recommended|showed|shown|used|made|created|"
        r"generated|proposed|offered|stated|noted|included|quoted|cited|shared|referenced|presented|outlined|"
        r"came up with|talked about|were saying|were talking|are saying|were referring|meant|mean by|forgot|"
        r"missed|left out|ignored|did not|misunderstood|got (?:it|that|this) wrong)\b"
    ),
    re.compile(
        r"\b(?:the|your|that|this) (?:previous|last|earlier|above|prior|preceding|initial|original|latest|"
        r"most recent) (?:answer|response|reply|message|question|output|version|example|point|step|paragraph|"
        r"sentence|section|part|code|list|suggestion|prompt|request|explanation|story|poem|text|draft|"
        r"translation|solution|one)s?\b"
    ),
    re.compile(
        r"(?<!\bwrite )(?<!\bformat )(?<!\bgive )(?<!\bprovide )(?<!\bbegin )(?<!\bstart )(?<!\bend )"
        r"(?<!\bkeep )(?<!\bput )(?<!\blimit )(?<!\bphrase )(?<!\bstructure )"
        r"\byour (?:own )?(?:\S+ )?"
        r"(?:answer|response|reply|explanation|example|examples|code|list|suggestion|suggestions|story|poem|"
        r"essay|summary|solution|output|version|text|email|letter|draft|outline|table|script|message|"
        r"translation|recommendation|recommendations|definition|advice|description|proposal|plan|article|post|"
        r"program|function|query|joke|song|lyrics|points|statement|claim|calculation|result|results|analysis|"
        r"argument|reasoning|approach|method|steps|instructions|tips)\b"
    ),
    re.compile(r"\bdid you (?:say|mention|suggest|recommend|use|write|mean|choose|pick|include|leave out|skip|change)\b"),
    re.compile(
        r"\b(?:as|like) (?:you|i|we) (?:\S+ )?(?:said|mentioned|stated|described|discussed|noted|explained|"
        r"suggested|asked|requested|wrote)\b"
    ),
    re.compile(r"\bas (?:mentioned|discussed|stated|noted|requested)\b"),
    re.compile(
        r"\b(?:mentioned|said|listed|described|discussed|given|provided|shown|written|stated|noted|explained|"
        r"suggested|outlined|shared) (?:above|earlier|before|previously)\b"
    ),
    re.compile(r"\b(?:earlier|above|before) in (?:this|our|the) (?:conversation|chat|discussion|thread)\b"),
    re.compile(r"\b(?:our|this) (?:conversation|chat|discussion) (?:so far|above|earlier)\b"),
    re.compile(r"\b(?:go|going|get|come|coming|went) back to\b"),
    re.compile(r"\bwhere (?:you|we) left off\b"),
]


# ---------------------------------------------------------------------------- text


_FENCE_RE = re.compile(r"```.*?(?:```|$)", re.DOTALL)
_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
_DQUOTE_RE = re.compile(r"\"[^\"\n]*\"|\u201c[^\u201d\n]*\u201d")
_SQUOTE_RE = re.compile(r"(?<![\w])'[^'\n]{1,300}'(?![\w])")
_COLON_RE = re.compile(r":(?:\s+|$)")
_TOKEN_RE = re.compile(r"<material>|[A-Za-z0-9]+(?=n't)|n't|'[A-Za-z]+|[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*|[^\sA-Za-z0-9]")
_CONTRACTIONS = {"'re": "are", "'ll": "will", "'d": "would", "'ve": "have", "'m": "am", "n't": "not"}
_IS_CONTRACTED = frozenset("it that what there here he she who how where this when why".split())
# A first line that points at what follows, and text that looks like code.
_POINTER_RE = re.compile(r"\b(?:this|these|following|below|here|attached|given)\b", re.IGNORECASE)
_CODE_RE = re.compile(r"[{}]|</|\bdef |\bimport |#include|\s=\s|=>|\(\);")
_COLON_LABELS = frozenset(
    "note question task q update edit ps context instruction instructions request follow-up followup user "
    "prompt query also btw ok okay hint".split()
)


@dataclass
class _Text:
    words: list[str]  # lowercased tokens of the instruction (punctuation kept, contractions expanded)
    orig: list[str]  # the same tokens as written
    starts: list[int]  # offset of each token in ``low``
    low: str  # " ".join(words)
    material_chars: int

    @property
    def long_material(self) -> bool:
        return self.material_chars >= LONG_MATERIAL_CHARS

    @classmethod
    def parse(cls, query: str) -> "_Text":
        text = query.replace("\u2019", "'").replace("\u2018", "'")
        material = 0

        def cut(m: re.Match[str]) -> str:
            nonlocal material
            material += len(m.group(0))
            return f" {_MATERIAL} "

        fenced = len(_FENCE_RE.findall(text))
        text = _FENCE_RE.sub(cut, text)
        material += fenced * LONG_MATERIAL_CHARS  # a code block is always substantial material
        text = _INLINE_CODE_RE.sub(cut, text)
        text = _DQUOTE_RE.sub(cut, text)
        text = _SQUOTE_RE.sub(cut, text)
        text = text.strip()
        colon = _COLON_RE.search(text)
        while colon is not None:
            head, rest = text[: colon.start()], text[colon.end() :]
            if head.strip().lower() in _COLON_LABELS:
                text = rest.strip()
                colon = _COLON_RE.search(text)
                continue
            if rest.strip():
                material += len(rest.strip())
                text = f"{head} {_MATERIAL}"
            break
        if "\n" in text:
            first, rest = text.split("\n", 1)
            if len(rest.strip()) >= LONG_MATERIAL_CHARS and (_POINTER_RE.search(first) or _CODE_RE.search(rest)):
                material += len(rest.strip())
                text = f"{first} {_MATERIAL}"
            else:
                text = text.replace("\n", " . ")
        orig: list[str] = []
        words: list[str] = []
        for tok in _TOKEN_RE.findall(text):
            low = tok.lower()
            if low == "'s" and words and words[-1] in _IS_CONTRACTED:
                low = "is"
            low = _CONTRACTIONS.get(low, low)
            orig.append(tok)
            words.append(low)
            if len(words) >= MAX_WORDS:
                break
        starts: list[int] = []
        pos = 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        return cls(words=words, orig=orig, starts=starts, low=" ".join(words), material_chars=material)

    def left(self, i: int) -> str:
        return self.low[: self.starts[i]].rstrip()

    def right(self, i: int) -> str:
        return self.low[self.starts[i] + len(self.words[i]) :]

    def word(self, i: int) -> str:
        return self.words[i] if 0 <= i < len(self.words) else ""

    def sentence_start(self, i: int) -> bool:
        """Whether token i starts a sentence (ignoring lead-ins such as "ok," or "and")."""
        j = i - 1
        while j >= 0 and self.words[j] in ("and", "but", "so", "ok", "okay", "well", "yes", "no", "hmm", "oh", ","):
            j -= 1
        return j < 0 or self.words[j] in (".", "!", "?", ";", ":", _MATERIAL)

    def clause_end(self, i: int) -> bool:
        """Whether nothing but punctuation, material or the end follows token i's clause."""
        nxt = self.word(i + 1)
        return nxt == "" or nxt in (".", "?", "!", ",", ";", ":", ")", _MATERIAL)

    def word_count(self) -> int:
        return sum(1 for w in self.words if w[0].isalnum())

    def material_near(self, i: int, span: int = 4) -> bool:
        return _MATERIAL in self.words[i + 1 : i + 1 + span]

    def proper_noun(self, j: int, *, allow_initial: bool) -> bool:
        tok = self.orig[j]
        if len(tok) < 2 or not tok[0].isupper() or not tok.isalpha() or self.words[j] in _COMMON:
            return False
        return allow_initial or not self.sentence_start(j)


# ---------------------------------------------------------------------------- anaphora


_ARTIFACT_EDIT_RE = re.compile(
    r"(?:^|[.!?,] |\b(?:please|you|now|then|and) )"
    r"(?:rewrite|rephrase|reword|revise|redo|shorten|lengthen|simplify|summarize|summarise|condense|expand|"
    r"translate|convert|reformat|format|fix|correct|improve|polish|refine|edit|proofread|optimize|refactor|"
    r"extend|modify|update|adapt|tweak|paraphrase|restate|retell|critique|evaluate|review|change|sort|remove|delete|"
    r"rearrange|reorder|continue|finish|complete|explain|check|debug|test|run) "
    r"(?P<np>the (?:\S+ )?(?:story|poem|essay|email|letter|text|code|function|program|script|list|table|plan|"
    r"article|paragraph|answer|response|summary|outline|draft|song|lyrics|joke|speech|recipe|menu|message|"
    r"post|tweet|report|proposal|itinerary|schedule|query|sentence|dialogue|equation|rating|result|example|"
    r"description|slogan|title|bio|review|translation|solution|class|method|loop|section|chapter|step|line)s?)\b"
    r"(?! (?:of|about|that|which|who|from|on|by|for|<material>)\b)(?! <material>)"
)
_ABOVE_RE = re.compile(
    r"\bthe (?:\S+ ){0,2}?[a-z]+ (?:above|mentioned)"
    r"(?= [.?!,;]| (?:from|in|and|or|with|to|for|is|are|was|were|into|as|but)\b|$)"
)


def _anaphora(t: _Text, out: list[str]) -> None:
    for i, w in enumerate(t.words):
        cue: str | None = None
        if w in _IT:
            if not (w == "it" and _dummy_it(t, i)) and not t.long_material and not _bound(t, i, plural=False):
                cue = w
        elif w in _THEY:
            if not t.long_material and not _bound(t, i, plural=True):
                cue = w
        elif w in _PERSON:
            if not t.long_material and not _person_bound(t, i):
                cue = w
        elif w in ("this", "these"):
            if _demonstrative(t, i, plural=w == "these"):
                cue = w if t.word(i + 1) not in _BACKREF_NOUNS else f"{w} {t.word(i + 1)}"
        elif w == "those":
            if _those(t, i):
                cue = w
        elif w == "that":
            if _that(t, i):
                cue = w if t.word(i + 1) not in _BACKREF_NOUNS else f"that {t.word(i + 1)}"
        elif w == "there":
            if _there(t, i):
                cue = w
        else:
            cue = _phrase_anaphora(t, i)
        if cue:
            out.append(cue)
    if not t.long_material:
        for m in _ARTIFACT_EDIT_RE.finditer(t.low):
            out.append(m.group("np"))
    for m in _ABOVE_RE.finditer(t.low):
        out.append(m.group(0))


def _dummy_it(t: _Text, i: int) -> bool:
    left, right = t.left(i), t.right(i)
    if any(p.search(right) for p in _IT_DUMMY_RIGHT):
        return True
    if _IT_DUMMY_INVERTED_LEFT.search(left) and any(p.search(right) for p in _IT_DUMMY_INVERTED_RIGHT):
        return True
    for lp, rp in _IT_DUMMY_LEFT:
        if lp.search(left) and (rp is None or rp.search(right)):
            return True
    return False


def _bound(t: _Text, i: int, *, plural: bool) -> bool:
    """Whether an earlier noun phrase of the query can bind token i.

    Subject-like pronouns need a clause boundary in between ("I have a list; sort it"), possessives
    and reflexives do not ("a dragon who loses its fire", "a tree in its lifetime").
    """
    crossed = t.words[i] in _POSSESSIVE_OR_REFLEXIVE
    for j in range(i - 1, -1, -1):
        w = t.words[j]
        if w in _PUNCT_BOUNDARY or w in _BOUNDARY_WORDS or w == _MATERIAL:
            crossed = True
            continue
        if not crossed:
            continue
        if t.proper_noun(j, allow_initial=False):
            return True
        dets = _DETS_PLURAL if plural else _DETS_SINGULAR
        if w in dets:
            head = _np_head(t, j)
            if head and head not in _META_NOUNS and (not plural or w not in ("my", "our") or head.endswith("s")):
                return True
        if _topic_head(t, j) is not None:
            return True
        if plural and (_bare_plural(t, j) or w in _PERSON_NOUNS):  # singular "they" for a person
            return True
    return False


def _topic_head(t: _Text, j: int) -> str | None:
    """The noun a query is about when token j introduces it ("what is X", "explain X", "about X")."""
    w = t.words[j]
    if not (w in ("explain", "define", "describe", "about") or (w in ("is", "are") and t.word(j - 1) == "what")):
        return None
    k = j + 1 if t.word(j + 1) in ("a", "an", "the") else j
    head = _np_head(t, k)
    return head if head and head not in _META_NOUNS else None


def _np_head(t: _Text, det: int) -> str | None:
    """The last word of the (at most 3-word) run of content words after a determiner."""
    head = None
    for k in range(det + 1, min(det + 4, len(t.words))):
        w = t.words[k]
        if not w.isalpha() or w in _FUNCTION_WORDS or w in _BOUNDARY_WORDS or w in _PREPS:
            break
        head = w
    return head


def _bare_plural(t: _Text, j: int) -> bool:
    w = t.words[j]
    if w in _IRREGULAR_PLURALS:
        return True
    if len(w) < 4 or not w.isalpha() or not w.endswith("s") or w.endswith("ss") or w in _S_WORDS:
        return False
    if w in _META_NOUNS or w in _COMMON:
        return False
    prev = t.word(j - 1)
    return prev not in ("it", "he", "she", "this", "that", "which", "who", "what")  # "it works" is a verb


def _person_bound(t: _Text, i: int) -> bool:
    for j in range(i):
        if t.words[j] in _PERSON_NOUNS or (t.words[j][:-1] in _PERSON_NOUNS and t.words[j].endswith("s")):
            return True
        if t.proper_noun(j, allow_initial=True):
            return True
    return False


def _demonstrative(t: _Text, i: int, *, plural: bool) -> bool:
    nxt = t.word(i + 1)
    if nxt in _TIME_WORDS or nxt in ("following", "below"):
        return False
    if t.long_material or t.material_near(i):
        return False
    if nxt == "is" and t.right(i).startswith(" is my first"):
        return False
    if nxt in ("way", "much", "far") and t.word(i + 2) in ("to", "of", "that"):  # "this way to"
        return False
    return not _bound(t, i, plural=plural)


def _those(t: _Text, i: int) -> bool:
    nxt, after = t.word(i + 1), t.word(i + 2)
    generic = {"who", "which", "that", "whose", "of", "with", "in", "at", "from", "for", "without", "interested",
               "living", "looking", "using", "working", "seeking", "wanting", "suffering", "affected", "born"}
    if nxt in generic or nxt == "days" or (nxt.isalpha() and after in ("who", "which", "that", "whose")):
        return False
    if t.long_material or t.material_near(i):
        return False
    return not _bound(t, i, plural=True)


def _that(t: _Text, i: int) -> bool:
    return _that_demonstrative(t, i) and not _bound(t, i, plural=False)


def _that_demonstrative(t: _Text, i: int) -> bool:
    prev, nxt = t.word(i - 1), t.word(i + 1)
    right = t.right(i)
    if right.startswith(" is ,") or right.startswith(" is to say") or nxt in _DEGREE_NEXT:
        return False
    if prev in ("so", "such", "now", "given", "except", "provided", "assuming", "considering"):
        return False
    if t.material_near(i) and nxt not in _BACKREF_NOUNS:
        return False
    if t.sentence_start(i):
        return True
    if prev in _AUX and (t.sentence_start(i - 1) or any(w in _WH for w in t.words[max(0, i - 4) : i - 1])):
        return True
    if prev in _WH and prev not in ("how", "what") and t.clause_end(i):
        return True
    if prev == "in":
        return nxt in ("case", "one") or t.clause_end(i)
    if prev in _PREPS:
        return True
    if nxt in _BACKREF_NOUNS and prev not in _COMPLEMENTIZER_BEFORE and not _noun_before(t, i):
        return True
    if prev in _THAT_VERBS and (t.clause_end(i) or nxt in _THAT_VERB_NEXT):
        return True
    return t.clause_end(i) and prev.isalpha()


def _noun_before(t: _Text, i: int) -> bool:
    """Whether token i-1 looks like a noun with a determiner (so "that" is likely relative)."""
    return t.word(i - 2) in ("a", "an", "the", "my", "your", "our", "some", "any", "every", "each", "no")


def _there(t: _Text, i: int) -> bool:
    prev, nxt = t.word(i - 1), t.word(i + 1)
    if prev in ("is", "are", "was", "were", "be", "been", "hi", "hello", "hey", "out", "over", "and", "then"):
        return False
    existential = {"is", "are", "was", "were", "be", "been", "exist", "exists", "seem", "seems", "appear",
                   "appears", "might", "may", "must", "should", "will", "would", "could", "can", "used", "remain",
                   "remains", "any", "a", "an", "some", "no", "has", "have", "had", "'s", "going"}
    if nxt in existential:
        return False
    return prev in ("get", "go", "went", "going", "stay", "live", "living", "from", "in", "near", "travel",
                    "arrive", "move", "drive", "fly", "visit", "there", "back")


_FORMER_NEXT = frozenset({"one", "option", "approach", "method", "and", "or", "more", "better"})
_ORDINALS = frozenset("first second third fourth fifth sixth seventh eighth ninth tenth last other next final middle".split())


def _phrase_anaphora(t: _Text, i: int) -> str | None:
    w, nxt, prev = t.words[i], t.word(i + 1), t.word(i - 1)
    if w == "the":
        if nxt in ("above", "aforementioned"):
            return f"the {nxt}"
        if nxt in ("former", "latter") and (t.clause_end(i + 1) or t.word(i + 2) in _AUX | _FORMER_NEXT):
            return f"the {nxt}"
        if nxt in _ORDINALS and t.word(i + 2) in ("one", "ones") and t.word(i + 3) not in ("to", "who"):
            return f"the {nxt} {t.word(i + 2)}"
        if nxt == "same" and prev != "at" and "as" not in t.words[i + 2 : i + 5] and t.word(i + 2) != "time":
            return "the same"
        if nxt == "rest" and (t.clause_end(i + 1) or t.word(i + 2) in ("please", "too", "as")):
            return "the rest"
        return None
    if w == "which" and nxt == "one" and "or" not in t.words[i + 2 :]:
        return "which one"
    if w == "such":
        such_nouns = {"case", "cases", "situation", "situations", "thing", "things", "scenario", "scenarios",
                      "approach", "method", "example", "examples", "system", "systems", "function", "code",
                      "tool", "tools", "request", "question", "questions", "change", "changes", "text", "data"}
        k = i + 2 if nxt in ("a", "an") else i + 1
        if t.word(k) in such_nouns:
            return f"such {t.word(k)}"
    return None


# ---------------------------------------------------------------------------- ellipsis


_OPENERS = [
    (re.compile(r"^(?:what|how) about\b"), None),
    (re.compile(r"^what if\b"), 15),
    (re.compile(r"^(?:and|or|but|so|also)\b"), 8),
    (re.compile(r"^(?:the )?same (?:for|with|but|thing|again|here|in)\b"), None),
    (
        re.compile(
            r"^now (?:in|for|with|as|into|do|make|translate|rewrite|convert|add|remove|change|try|use|shorten|"
            r"expand|summarize|include|replace|apply|combine|modify|update|fix|extend|write it|the same|again)\b"
        ),
        None,
    ),
    (re.compile(r"^(?:continue|go on|keep going|carry on|go ahead|proceed)\b"), None),
    (
        re.compile(r"^(?:next|more|another|one more|anything else|what else|any other|any others|others|any more|some more)\b"),
        6,
    ),
]
_EDIT_OPENER_RE = re.compile(r"^(?:make|keep|turn|change|put|format) (?:it|them|this|that|these|those)\b")
_SIMILAR_RE = re.compile(r"\b(?:a|an|some|other|more|few|\d+|two|three|four|five|ten) similar [a-z]+\b(?! to\b)")
_ELABORATE_RE = re.compile(
    r"(?:^|[.!?,] |\b(?:please|you|and|then|now|just) )(?:elaborate|expand)"
    r"(?: (?:more|further|a bit|a little|on (?:it|that|this|these|those|them)))?(?: [.?!]|$)"
)
_ANYWHERE = [
    re.compile(r"\btell me more\b"),
    re.compile(r"\b(?:more|further) details?\b"),
    re.compile(r"\bin (?:more|greater|further) (?:detail|depth)\b"),
    re.compile(r"\bexplain (?:further|more)\b"),
    re.compile(r"\b(?:go|dig) deeper\b"),
    re.compile(r"\bbe more (?:specific|concise|detailed|precise)\b"),
    re.compile(r"\b(?:try|do it|say it|say that|ask) again\b"),
    re.compile(r"\bgo ahead\b"),
]


def _ellipsis(t: _Text, out: list[str]) -> None:
    start = 0
    while start < len(t.words) and t.words[start] in _LEAD_INS:
        start += 1
    n_words = t.word_count()
    body = " ".join(t.words[start:])
    for pattern, max_words in _OPENERS:
        m = pattern.search(body) or pattern.search(t.low)
        if m and (max_words is None or n_words <= max_words):
            out.append(m.group(0))
    m = _EDIT_OPENER_RE.search(body)
    if m:
        out.append(f"{m.group(0)} ...")
    for pattern in _ANYWHERE:
        m = pattern.search(t.low)
        if m:
            out.append(m.group(0))
    m = _ELABORATE_RE.search(t.low)
    if m:
        out.append("elaborate" if "elaborate" in m.group(0) else "expand")
    m = _SIMILAR_RE.search(t.low)
    if m:
        out.append(m.group(0))
    last = _last_word(t)
    if "again" in t.words and n_words <= 6:
        out.append("again")
    if last == "instead":
        out.append("instead")
    if n_words <= 10 and (last == "too" or t.low.rstrip(" .!?").endswith("as well")):
        out.append("too" if last == "too" else "as well")
    if start < len(t.words) and t.words[start] in _EDIT_VERBS and n_words <= 10:
        nxt = t.word(start + 1)
        if (nxt == "" or nxt in _EDIT_NEXT) and not any(w in _WH for w in t.words[start + 1 :]):
            out.append(t.words[start])
    content = [w for w in t.words if w[0].isalnum()]
    if 0 < len(content) <= 3 and not any(w in _VERBS for w in content) and _MATERIAL not in t.words:
        out.append("short fragment")


def _last_word(t: _Text) -> str:
    for w in reversed(t.words):
        if w[0].isalnum():
            return w
    return ""


# ---------------------------------------------------------------------------- explicit references


def _explicit(t: _Text, out: list[str]) -> None:
    for pattern in _EXPLICIT_PATTERNS:
        for m in pattern.finditer(t.low):
            cue = m.group(0).lstrip(".!? ")
            out.append(cue)
