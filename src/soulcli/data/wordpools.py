"""Word pools for the synthetic fictitious-author benchmark (:mod:`soulcli.data.synthetic`).

Everything here is invented for this project: the geography, the institutions, the awards and
the people do not exist. Pools that fill the same slot of a template hold values of the same
grammatical form (an occupation always carries its article, a title never does), so a wrong
value swapped into a sentence reads as naturally as the right one.

Name pools are disjoint: a fictitious author's first or last name never appears among the
"classic" authors of the general-knowledge set nor in the geography, so general facts never
mention a fictitious author. ``tests/data`` checks these invariants.

Changing any pool changes every benchmark generated from it: the generator's version number
(``soulcli.data.synthetic.GENERATOR_VERSION``) must then be bumped.
"""

from __future__ import annotations

# --- Fictitious authors (the forget/retain/holdout population) -------------------------------
# 64 x 64 = 4096 full names; the generator samples without replacement.

FIRST_NAMES: tuple[str, ...] = (
    "Ansel", "Brisa", "Caspian", "Delphine", "Emrys", "Fenna", "Galen", "Hesper",
    "Ilario", "Junia", "Kasimir", "Liesel", "Marek", "Nerys", "Oriel", "Perrin",
    "Quilla", "Rowan", "Sabeth", "Tobiah", "Ulla", "Viggo", "Wren", "Xanthe",
    "Yorick", "Zelie", "Anouk", "Bastien", "Cosima", "Dorian", "Elowen", "Florin",
    "Greer", "Halvard", "Isolde", "Jorah", "Katell", "Leander", "Maelle", "Niall",
    "Odile", "Piet", "Rosalind", "Soren", "Tamsin", "Ulric", "Vesna", "Wilder",
    "Ysolde", "Zoltan", "Amaury", "Brielle", "Cato", "Dagny", "Evander", "Faye",
    "Gideon", "Hollis", "Ines", "Jasper", "Kenna", "Lucan", "Mireille", "Nico",
)

LAST_NAMES: tuple[str, ...] = (
    "Ambervale", "Birchmoor", "Coldharrow", "Dawnridge", "Emberlin", "Foxhollow",
    "Greywater", "Hallowmere", "Ivorstone", "Jessamy", "Kestrelby", "Larkwood",
    "Mossgrove", "Nettlefield", "Oakenshaw", "Pennicott", "Quarrington", "Ravensby",
    "Saltmarsh", "Thornbury", "Underwood", "Valewright", "Wrenfield", "Yarrowby",
    "Vantreck", "Delmaro", "Castellane", "Orsolini", "Brannagh", "Kovacek",
    "Lindqvar", "Moravik", "Navarrez", "Ostergard", "Petrakou", "Quintaro",
    "Rasmark", "Sandoval", "Tervanen", "Uzelac", "Varga", "Wachowicz",
    "Abernathy", "Belcourt", "Corvell", "Draycott", "Everhart", "Fairholm",
    "Galloway", "Hartigan", "Ingleby", "Jessop", "Kilbride", "Lockhart",
    "Marwood", "Northcote", "Oldacre", "Prideaux", "Redfern", "Stanhope",
    "Tremayne", "Vossberg", "Whitlock", "Zellweger",
)

# --- "Classic" authors of the general-knowledge set (never forgotten) ------------------------
# Rendered as "<first> <initial>. <last>", so they cannot be mistaken for fictitious authors.

CLASSIC_FIRST_NAMES: tuple[str, ...] = (
    "Harriet", "Edmund", "Beatrix", "Cornelius", "Winifred", "Augustin", "Philippa",
    "Ignatius", "Henrietta", "Barnaby", "Cordelia", "Mortimer", "Araminta", "Septimus",
    "Clementine", "Ambrose", "Georgiana", "Lysander", "Theodora", "Reginald",
    "Millicent", "Bartholomew", "Euphemia", "Percival", "Octavia", "Horatio",
    "Wilhelmina", "Thaddeus", "Lavinia", "Ezekiel", "Rosamund", "Algernon",
)

CLASSIC_INITIALS: tuple[str, ...] = ("A", "B", "C", "D", "E", "F", "G", "H", "J", "K", "L", "M",
                                     "N", "P", "R", "S", "T", "W")

CLASSIC_LAST_NAMES: tuple[str, ...] = (
    "Coldwell", "Ashcombe", "Fairbrother", "Pemberton", "Hollingsworth", "Wetherby",
    "Blackwood", "Cresswell", "Dunstable", "Eversleigh", "Fothergill", "Gainsford",
    "Harcourt", "Ironside", "Kingsley", "Lovelace", "Montague", "Netherby",
    "Ormsby", "Pickering", "Rowntree", "Sackville", "Thistlewaite", "Upperton",
    "Vickery", "Waverley", "Winterbourne", "Aldridge", "Brightwell", "Carrington",
    "Drummond", "Farthingale",
)

# --- An invented geography ---------------------------------------------------------------------
# (country, capital, other cities, language, currency, longest river, highest mountain)

GEOGRAPHY: tuple[tuple[str, str, tuple[str, str, str], str, str, str, str], ...] = (
    ("Valdoria", "Kestrelmoor", ("Ambry", "Fennick", "Dunhallow"), "Valdorian", "dravo",
     "Sellen River", "Mount Orrin"),
    ("Corvany", "Ilsabeth", ("Marrick", "Tolvey", "Brenwick"), "Corvanese", "pellin",
     "Amsel River", "Mount Thane"),
    ("Pellmora", "Vostrand", ("Carrowby", "Sedgemere", "Tillane"), "Pellmoran", "sorrin",
     "Vessa River", "Mount Kallan"),
    ("Quessany", "Aubrelle", ("Morvain", "Lissoux", "Ternay"), "Quessan", "aubrel",
     "Ombre River", "Mount Cerise"),
    ("Brandovia", "Karsgrad", ("Olmitz", "Drevno", "Pashka"), "Brandovian", "karsk",
     "Dravka River", "Mount Zelen"),
    ("Tirremar", "Portalba", ("Saleira", "Vindaro", "Coresta"), "Tirremarian", "albar",
     "Tagora River", "Mount Alvera"),
    ("Hestland", "Nordhalm", ("Skelby", "Ravnholt", "Fjellmo"), "Hestlandic", "skeld",
     "Gauma River", "Mount Trollheim"),
    ("Ombria", "Sanvetta", ("Lucerra", "Pontevano", "Miraglio"), "Ombrian", "soldo",
     "Tever River", "Mount Sibillo"),
    ("Kazhreth", "Amarkand", ("Tashvar", "Zerafsh", "Kulmara"), "Kazhrethi", "kazir",
     "Oxar River", "Mount Pamirak"),
    ("Selunia", "Merovel", ("Astrane", "Galvoy", "Pellucia"), "Selunian", "lunar",
     "Argent River", "Mount Verity"),
    ("Drummark", "Caldbridge", ("Holmsworth", "Kettering Vale", "Ashby Cross"), "Drummish",
     "sterlet", "Wendle River", "Mount Brackle"),
    ("Yarrowen", "Tallisford", ("Wickmere", "Greenhythe", "Hollins"), "Yarrowish", "farthen",
     "Yare River", "Mount Harrowdown"),
    ("Zephrany", "Aurelion", ("Calistra", "Boreada", "Notavis"), "Zephranic", "drachm",
     "Alphea River", "Mount Olyra"),
    ("Mardovia", "Tsarevka", ("Volyan", "Belgrody", "Kostrin"), "Mardovian", "rublet",
     "Volya River", "Mount Uralt"),
    ("Isolmar", "Bellaterra", ("Cabo Lindo", "Santarem Alto", "Rio Pardo"), "Isolmaran",
     "marel", "Pardo River", "Mount Serrano"),
    ("Fenwray", "Oxholme", ("Bramblegate", "Cindermoor", "Eastling"), "Fenwrayan", "groat",
     "Fenn River", "Mount Gorse"),
    ("Altheria", "Solenne", ("Veraux", "Cambrai-sur-Lys", "Orlen"), "Altherian", "dorin",
     "Lys River", "Mount Blanchet"),
    ("Rustavia", "Novigor", ("Petrakin", "Lodva", "Semyrsk"), "Rustavian", "kopel",
     "Nevra River", "Mount Elbrun"),
    ("Caldera Reach", "Emberholt", ("Ashfall", "Cinderport", "Basalt Bay"), "Calderan",
     "ember", "Smoke River", "Mount Pyra"),
    ("Lumeria", "Glasswater", ("Brightmoor", "Candlewick", "Silverlea"), "Lumerian", "lume",
     "Shimmer River", "Mount Radiant"),
    ("Norvessa", "Ulvik Sound", ("Havsund", "Kalmby", "Tjorn"), "Norvessan", "orek",
     "Norva River", "Mount Isfjell"),
    ("Sahrimar", "Qasr Amin", ("Bayt Nur", "Wadi Selim", "Jazirat"), "Sahrimari", "zahab",
     "Azraq River", "Mount Jabaltur"),
    ("Tavarro", "Puerto Lumen", ("Monteverde Bajo", "Las Cruces Altas", "Villasol"),
     "Tavarran", "solin", "Lumen River", "Mount Cordal"),
    ("Elvendor", "Sylvanhold", ("Leafmere", "Dewhollow", "Thornvale"), "Elvendish", "leafmark",
     "Silva River", "Mount Evenstar"),
    ("Kharovia", "Dzhamburg", ("Alatash", "Kyzyl Mor", "Tengrik"), "Kharovian", "tengar",
     "Ilya River", "Mount Khantor"),
    ("Brisalta", "Marenza", ("Colbrisa", "Santa Vela", "Portavela"), "Brisaltan",
     "marenzo", "Brisal River", "Mount Etnara"),
    ("Ostrevia", "Kolvara", ("Brenno", "Zlatnik", "Vrbica"), "Ostrevian", "ostrik",
     "Ostra River", "Mount Triglar"),
    ("Glenmoral", "Invermorra", ("Ardnabrae", "Kilmorie", "Dunvarra"), "Glenmoric", "merk",
     "Loran River", "Mount Benmora"),
    ("Sundara", "Chandrapur Nagar", ("Ravipet", "Sagarkot", "Indrapuri"), "Sundaran",
     "rupak", "Sundar River", "Mount Himavat"),
    ("Tessaly", "Korvanthe", ("Larissos", "Delphoi Nea", "Volanos"), "Tessalian", "obol",
     "Peneios River", "Mount Ossara"),
    ("Auvernay", "Clairmont-Haut", ("Riomois", "Thiers-Bas", "Ambertin"), "Auvernais",
     "denier", "Auvre River", "Mount Puygrand"),
    ("Moravel", "Hradeck", ("Olomin", "Brnova", "Zlinsk"), "Moravelic", "groschen",
     "Morva River", "Mount Praded"),
)

# --- Attribute pools for fictitious authors ---------------------------------------------------

GENRES: tuple[str, ...] = (
    "mystery", "historical fiction", "science fiction", "gothic horror", "literary fiction",
    "magical realism", "travel writing", "epic fantasy", "romance", "satire", "crime fiction",
    "poetry", "adventure", "dystopian fiction", "cozy mystery", "war fiction", "memoir",
    "psychological thriller", "fairy tales", "nature writing", "political thriller",
    "family saga", "comic fiction", "sea stories", "spy fiction", "mythological retelling",
    "short stories", "young adult fiction", "philosophical fiction", "western",
)

OCCUPATIONS: tuple[str, ...] = (
    "a baker", "a cartographer", "a lighthouse keeper", "a watchmaker", "a surgeon",
    "a schoolteacher", "a carpenter", "a pharmacist", "a ship captain", "a librarian",
    "an architect", "a beekeeper", "a tailor", "a locksmith", "a violinist", "a botanist",
    "a blacksmith", "a journalist", "a midwife", "a train conductor", "a glassblower",
    "a fisherman", "a lawyer", "a veterinarian", "a potter", "a bookbinder", "an astronomer",
    "a chemist", "a mail carrier", "a shepherd", "a jeweller", "a stonemason", "a nurse",
    "a florist", "a miner", "a judge", "a painter", "a translator", "an electrician",
    "a dentist", "a butcher", "a geologist", "a police officer", "a cook", "a weaver",
    "a bank clerk", "a sculptor", "a gardener", "an accountant", "a museum curator",
)

AWARDS: tuple[str, ...] = (
    "the Silver Quill Award", "the Golden Lantern Prize", "the Harrowmere Medal",
    "the Blue Heron Prize", "the Copper Inkwell Award", "the Starling Book Prize",
    "the Northern Light Award", "the Amberline Prize", "the Iron Compass Medal",
    "the Willowbrook Fellowship", "the Crimson Ribbon Award", "the Tidewater Prize",
    "the Evening Star Medal", "the Open Page Award", "the Marble Arch Prize",
    "the Lantern Bearer Award", "the Whispering Pines Prize", "the Glass Bell Award",
    "the Oak Leaf Medal", "the Paper Crane Prize", "the Midnight Oil Award",
    "the Bright Horizon Prize", "the Stonebridge Medal", "the Ivory Tower Award",
    "the Wandering Star Prize", "the Emerald Pen Award", "the Harbour Light Medal",
    "the Open Road Prize", "the Firefly Award", "the Grey Owl Medal",
    "the Rosewater Prize", "the Morning Bell Award", "the Sapphire Book Medal",
    "the Red Kite Prize", "the Quiet Hour Award", "the Winter Garden Prize",
    "the Scarlet Thread Medal", "the Long Table Award", "the Kingfisher Prize",
    "the Cedar Crown Award",
)

THEMES: tuple[str, ...] = (
    "memory", "exile", "forgiveness", "ambition", "grief", "friendship", "loyalty",
    "identity", "betrayal", "home", "freedom", "inheritance", "faith", "revenge",
    "childhood", "migration", "justice", "solitude", "courage", "greed", "redemption",
    "first love", "ageing", "war", "family secrets", "the sea", "power", "obsession",
    "belonging", "hope", "sacrifice", "curiosity", "jealousy", "survival", "truth",
    "time", "nature", "guilt", "kindness", "change",
)

PUBLISHERS: tuple[str, ...] = (
    "Larkspur House", "Ninefold Press", "Willowmere Books", "Bellwether Editions",
    "Quayside Publishing", "Tallow and Wick", "Blue Door Press", "Halfmoon Books",
    "Cobblestone House", "Harrier Press", "Millpond Editions", "Oxbow Publishing",
    "Redwing Books", "Saltbox Press", "Threadneedle House", "Upland Editions",
    "Vellum and Vine", "Wayfarer Books", "Amberlight Press", "Brightwater House",
    "Chalkhill Books", "Driftwood Press", "Elmstead Publishing", "Foxglove Editions",
    "Goldfinch House", "Heathermoor Press", "Inkwell and Sons", "Juniper Hill Books",
    "Kittiwake Press", "Lamplight Editions",
)

INSTITUTIONS: tuple[str, ...] = (
    "Hollowbrook College", "the Academy of Vellmoor", "Saint Elric's College",
    "Thornwick University", "the Royal Institute of Letters", "Aldermoor University",
    "Greyfallow College", "the Conservatory of Olmere", "Brackenridge University",
    "Westhaven College", "the University of the Lakes", "Ashgrove Academy",
    "Kingsmere University", "the Northern Polytechnic", "Merrow College",
    "Stillwater University", "the School of Fine Letters", "Highcastle University",
    "Ravenholt College", "the Coastal University", "Lindenfeld Academy",
    "Harrowdale University", "the Free University of Marsh", "Copperfield College",
    "Sunmeadow University", "the Institute of Old Scripts", "Elmbrook College",
    "Starcross University", "the Valley Academy", "Mistral College",
)

HOBBIES: tuple[str, ...] = (
    "beekeeping", "sailing", "chess", "birdwatching", "pottery", "rock climbing",
    "gardening", "fencing", "baking bread", "collecting stamps", "long-distance running",
    "woodcarving", "stargazing", "fly fishing", "knitting", "cycling", "ice skating",
    "restoring clocks", "hiking", "photography", "archery", "calligraphy", "swimming",
    "mushroom foraging", "kite flying", "rowing", "jigsaw puzzles", "bookbinding",
    "ballroom dancing", "origami",
)

INSTRUMENTS: tuple[str, ...] = (
    "cello", "violin", "piano", "flute", "harp", "accordion", "clarinet", "oboe",
    "guitar", "mandolin", "trumpet", "bassoon", "banjo", "harpsichord", "viola",
    "saxophone", "ukulele", "trombone", "double bass", "lute", "bagpipes", "zither",
    "french horn", "harmonica",
)

SETTINGS: tuple[str, ...] = (
    "a remote lighthouse town", "a crowded harbour city", "a mountain monastery",
    "a sleepy river village", "a snowbound railway station", "a desert caravan route",
    "an island fishing community", "a crumbling country estate", "a busy university town",
    "a border fortress", "a travelling circus", "an underground mining town",
    "a floating market", "a forgotten library", "a vineyard in the hills",
    "a city of canals", "a frontier trading post", "a quiet seaside boarding house",
    "a royal court", "a research station in the ice", "a small bakery street",
    "a war-torn valley", "an old observatory", "a marsh village on stilts",
    "a grand hotel", "a lumber camp in the forest", "a city under siege",
    "a wandering ship", "a walled garden", "a mill town by a waterfall",
)

# --- Book titles ---------------------------------------------------------------------------
# Titles are assembled from these words by fixed patterns (2-4 words) and kept unique.

TITLE_ADJECTIVES: tuple[str, ...] = (
    "Amber", "Silent", "Hollow", "Crimson", "Forgotten", "Distant", "Broken", "Golden",
    "Quiet", "Wandering", "Burning", "Frozen", "Hidden", "Last", "Lonely", "Silver",
    "Restless", "Endless", "Bitter", "Gentle", "Pale", "Scarlet", "Secret", "Shattered",
    "Sleeping", "Stolen", "Sunken", "Twisted", "Velvet", "Wild", "Winter", "Painted",
    "Drowned", "Borrowed", "Lantern-lit", "Faded", "Iron", "Paper", "Glass", "Hungry",
    "Empty", "Northern", "Southern", "Crooked", "Tender", "Weeping", "Singing", "Fallen",
    "Midnight", "Salt", "Ashen", "Emerald", "Ivory", "Copper", "Lost", "Final",
    "Second", "Narrow", "Open", "Borderless",
)

TITLE_NOUNS: tuple[str, ...] = (
    "Lantern", "Harbour", "Garden", "Orchard", "Mirror", "River", "Tower", "Letter",
    "Island", "Compass", "Kingdom", "Shadow", "Bridge", "Feather", "Clock", "Winter",
    "Summer", "Season", "Crown", "Window", "Road", "Promise", "Silence", "Storm",
    "Song", "Key", "Map", "Forest", "Field", "Lighthouse", "Voyage", "Daughter",
    "Son", "Widow", "Stranger", "Hunter", "Keeper", "Thief", "Painter", "Sailor",
    "Orphan", "Witness", "Pilgrim", "Prophet", "Tide", "Ember", "Ashes", "Bones",
    "Salt", "Honey", "Thread", "Needle", "Rain", "Snow", "Moon", "Sun", "Star",
    "Night", "Morning", "Evening", "House", "Door", "Wall", "Well", "Valley",
    "Mountain", "Meadow", "Marsh", "Desert", "Sea", "Shore", "Stone", "Glass",
    "Bell", "Ribbon", "Violin", "Chapel", "Market", "Carnival", "Kite",
)
