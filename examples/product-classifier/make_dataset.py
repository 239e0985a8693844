#!/usr/bin/env python3
"""Generate the synthetic product-categorisation dataset for this example.

Each example is a short online-shop style product description (a title-like
sentence plus a detail or two) labelled with one of ten categories.  The texts
are composed from hand-written per-category vocabularies (invented brands,
product types with type-specific details, generic features, materials,
colours, sizes, use cases) and several sentence templates per category.

A small fraction (about 5%) of each category is drawn from hand-written
"borderline" listings that share vocabulary with another category (a kids'
football sold under sports, a phone car mount under automotive, a dog shampoo
under pet supplies, ...), so the task cannot be solved with a single keyword.

Only the Python standard library is used and the random generator is seeded
(``random.Random(1234)``), so the output is fully deterministic.

Usage (from the repository root)::

    python3 examples/product-classifier/make_dataset.py

Writes ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (one JSON
object per line: ``{"text": ..., "label": ...}``) into the ``data/`` folder
next to this script, overwriting any existing files.
"""

import json
import random
import re
import string
from collections import Counter
from pathlib import Path

SEED = 1234
PER_LABEL = 125  # examples per category
AMBIGUOUS_PER_LABEL = 6  # ~5% borderline listings per category
SPLIT_SIZES = {"train": 87, "validation": 19, "test": 19}  # per category
MIN_WORDS, MAX_WORDS = 10, 40

LABELS = [
    "electronics",
    "clothing",
    "home_kitchen",
    "beauty",
    "sports_outdoors",
    "toys_games",
    "books",
    "grocery",
    "automotive",
    "pet_supplies",
]

# ---------------------------------------------------------------------------
# Vocabularies.  Each category has:
#   brands     - invented brand names
#   products   - (product type, [type-specific details]) with >= 25 types
#   features   - generic selling points that fit any product of the category
#   slots      - extra named lists used by the templates ({color}, {use}, ...)
#   templates  - >= 8 sentence templates
#   ambiguous  - borderline listings that overlap with another category
# Product names may contain "{aud}", which is replaced by an audience word.
# ---------------------------------------------------------------------------

CATEGORIES = {}

CATEGORIES["electronics"] = {
    "brands": ["Voltaro", "Lumetra", "Kestrel Audio", "Nexora", "Brightwave",
               "Ohmly", "QuantaLoop", "Sonivo", "Tekvane", "Pixelfin", "Arcwell"],
    "products": [
        ("wireless earbuds", ["up to 28 hours of playback with the charging case",
                              "active noise cancellation", "IPX5 sweat resistance",
                              "touch controls on each bud"]),
        ("over-ear headphones", ["40mm dynamic drivers", "foldable design with a padded headband",
                                 "30-hour battery life", "detachable 3.5mm audio cable"]),
        ("portable Bluetooth speaker", ["360-degree sound", "IPX7 waterproof rating",
                                        "pairs two units for stereo", "12 hours of playtime"]),
        ("smartwatch", ["heart-rate and sleep tracking", "1.4-inch AMOLED display",
                        "7-day battery life", "built-in GPS"]),
        ("65W USB-C charger", ["GaN technology in a compact body", "two USB-C ports and one USB-A port",
                               "foldable plug", "charges a laptop and phone at once"]),
        ("power bank", ["20,000mAh capacity", "charges a phone up to four times",
                        "18W Power Delivery output", "LED charge indicator"]),
        ("27-inch 4K monitor", ["IPS panel with 99% sRGB coverage", "HDR10 support",
                                "USB-C input with 90W power delivery", "height-adjustable stand"]),
        ("mechanical keyboard", ["hot-swappable switches", "per-key RGB backlighting",
                                 "tenkeyless layout", "detachable USB-C cable"]),
        ("wireless mouse", ["silent clicks", "adjustable DPI up to 4000",
                            "USB receiver stored inside", "ergonomic right-hand shape"]),
        ("1080p webcam", ["60fps video", "dual built-in microphones",
                          "sliding privacy shutter", "auto light correction"]),
        ("HDMI 2.1 cable", ["supports 4K at 120Hz and 8K at 60Hz", "braided nylon jacket",
                            "gold-plated connectors", "2-metre length"]),
        ("1TB portable SSD", ["read speeds up to 1050MB/s", "shock-resistant aluminium shell",
                              "USB-C and USB-A cables included", "hardware encryption"]),
        ("128GB microSD card", ["A2 rating for fast app loading", "SD adapter included",
                                "V30 speed class for 4K recording", "waterproof and shockproof"]),
        ("Wi-Fi 6 router", ["dual-band speeds up to 3000Mbps", "covers up to 2,500 sq ft",
                            "four gigabit LAN ports", "WPA3 security"]),
        ("mesh Wi-Fi system", ["three units covering up to 5,500 sq ft",
                               "seamless roaming between nodes", "app-based setup",
                               "parental controls"]),
        ("10-inch Android tablet", ["Full HD display", "64GB storage expandable via microSD",
                                    "octa-core processor", "13-hour battery"]),
        ("e-reader", ["glare-free 6-inch E Ink display", "adjustable warm front light",
                      "weeks of battery on a single charge", "8GB storage for thousands of titles"]),
        ("4K action camera", ["waterproof to 10 metres without a case",
                              "electronic image stabilisation", "front-facing selfie screen",
                              "two rechargeable batteries"]),
        ("smart plug", ["works with Alexa and Google Assistant", "energy usage monitoring",
                        "schedules and timers in the app", "no hub required"]),
        ("4K streaming stick", ["HDR10+ and Dolby Vision", "voice remote included",
                                "plugs straight into the HDMI port", "Wi-Fi 6 support"]),
        ("2.1 soundbar", ["wireless subwoofer", "Dolby Audio decoding",
                          "HDMI ARC and optical inputs", "dedicated dialogue mode"]),
        ("15W wireless charging pad", ["Qi-certified", "non-slip silicone surface",
                                       "soft LED status light", "case-friendly up to 5mm"]),
        ("7-in-1 USB-C hub", ["4K HDMI output", "SD and microSD card readers",
                              "100W pass-through charging", "three USB-A 3.0 ports"]),
        ("gaming headset", ["7.1 virtual surround sound", "detachable boom microphone",
                            "memory foam ear cushions", "works with PC and consoles"]),
        ("portable mini projector", ["native 1080p resolution", "built-in 5W speaker",
                                     "projects up to a 120-inch image", "keystone correction"]),
        ("mirrorless camera", ["24MP APS-C sensor", "15-45mm kit lens",
                               "4K video recording", "flip-out touchscreen"]),
        ("video doorbell", ["1080p HD video with night vision", "two-way talk",
                            "instant motion alerts", "wired or battery powered"]),
        ("surge protector power strip", ["six AC outlets and three USB ports",
                                         "1,800 joules of protection", "1.8-metre cord",
                                         "child safety shutters"]),
        ("Bluetooth audio receiver", ["adds wireless streaming to old speakers",
                                      "aptX Low Latency", "RCA and 3.5mm outputs",
                                      "pairs with two devices"]),
        ("graphics drawing tablet", ["8192 levels of pen pressure", "battery-free stylus",
                                     "eight customisable shortcut keys",
                                     "works with Windows, macOS and Linux"]),
    ],
    "features": ["Bluetooth 5.3", "USB-C charging", "a 2-year warranty",
                 "compatibility with iOS and Android", "plug-and-play setup",
                 "a low-latency mode", "over-the-air firmware updates",
                 "a compact, travel-friendly design", "a carry pouch in the box"],
    "slots": {
        "color": ["black", "white", "space grey", "midnight blue", "silver", "graphite", "sage"],
        "use": ["home office setups", "travel and commuting", "gaming",
                "video calls and streaming", "students", "everyday use",
                "home entertainment", "content creators"],
        "version": ["2024 model", "2nd generation", "upgraded version", "new release",
                    "Pro edition", "Lite edition"],
    },
    "templates": [
        "{brand} {product} ({color}): {d1}, {d2} and {d3}. Backed by {feature}, ideal for {use}.",
        "{brand} {product} in {color} - {d1}, {d2}.",
        "{brand} {product} ({version}) - {d1}, {d2}, {feature}.",
        "{Product} by {brand}: {d1}. Also features {feature}. Ideal for {use}.",
        "{brand} {product}, {color}. {D1}; {d2}; {feature}.",
        "New {product} from {brand} with {feature}: {d1}. Perfect for {use}.",
        "{brand} {version} {product}: {d1}, {d2}. Colour: {color}.",
        "Upgrade your setup with the {brand} {product} - {d1}, {d2}.",
        "{Product} ({color}) - {d1}, {feature}. Great for {use}. By {brand}.",
        "{brand} {product} with {feature} and {feature2}. {D1}.",
        "Compact {product} by {brand} for {use}. {D1}.",
    ],
    "ambiguous": [
        "{brand} magnetic phone car mount with 15W wireless charging, clips onto air vents and fits MagSafe cases.",
        "{brand} rechargeable electric toothbrush with three brushing modes, two-minute timer and USB travel case.",
        "{brand} kids' smartwatch with GPS tracker, SOS button, camera and fun games for ages 5 and up.",
        "{brand} fitness tracker band with step counting, heart-rate monitor and swim-proof design for runners.",
        "{brand} Wi-Fi pet camera with treat tosser, night vision and two-way audio so you can check on your dog.",
        "{brand} smart digital kitchen scale with app connectivity and nutrition tracking, weighs up to 5kg.",
        "{brand} heated hair straightening brush with ceramic bristles, LCD temperature display and auto shut-off.",
        "{brand} retro handheld game console with 500 built-in classic games and a 3-inch colour screen.",
    ],
}

CATEGORIES["clothing"] = {
    "brands": ["Northmere", "Olive & Thread", "Harbor Lane", "Wren & Co.", "Stitchwell",
               "Daybreak Denim", "Mossgrove", "Kinfolk Knits", "Urbanline", "Saltmarsh"],
    "products": [
        ("{aud} crew-neck T-shirt", ["sizes XS to XXL", "pre-shrunk jersey",
                                     "reinforced shoulder seams", "tagless neck label"]),
        ("{aud} pullover hoodie", ["brushed fleece lining", "kangaroo pocket",
                                   "ribbed cuffs and hem", "adjustable drawstring hood"]),
        ("{aud} jeans", ["waist sizes 28 to 40", "stretch denim for comfort",
                                  "classic five-pocket styling", "mid-rise waist"]),
        ("{aud} chino trousers", ["tapered leg", "hidden stretch waistband",
                                  "available in short, regular and long lengths", "wrinkle-resistant twill"]),
        ("{aud} denim jacket", ["button-front closure", "two chest pockets",
                                "relaxed trucker fit", "vintage stone wash"]),
        ("{aud} puffer jacket", ["lightweight recycled insulation", "packs into its own pocket",
                                 "water-repellent shell", "zip hand pockets"]),
        ("{aud} wool-blend coat", ["single-breasted design", "notch lapels",
                                   "fully lined", "knee length"]),
        ("{aud} cable-knit jumper", ["chunky cable pattern", "relaxed fit",
                                     "ribbed trims", "sizes S to XL"]),
        ("women's button-up cardigan", ["cropped length", "pearl-effect buttons",
                                        "soft brushed knit", "sizes 6 to 20"]),
        ("men's polo shirt", ["two-button placket", "piqué knit",
                              "ribbed collar", "sizes S to 3XL"]),
        ("men's oxford shirt", ["button-down collar", "chest pocket",
                                "regular fit", "collar sizes 14.5 to 18"]),
        ("{aud} linen shirt", ["breathable for summer", "relaxed fit",
                               "curved hem", "mother-of-pearl buttons"]),
        ("women's wrap midi dress", ["tie waist", "flutter sleeves",
                                     "V-neckline", "sizes 6 to 18"]),
        ("women's pleated maxi skirt", ["elasticated waist", "fully lined",
                                        "flowing ankle length", "sizes XS to XL"]),
        ("{aud} pyjama set", ["long-sleeve top and trousers", "piped trims",
                              "elastic waistband", "soft brushed cotton"]),
        ("{aud} crew socks, pack of 6", ["cushioned soles", "reinforced heel and toe",
                                         "fits shoe sizes 6 to 11", "seamless toe"]),
        ("men's boxer briefs, 3-pack", ["soft waistband", "no-ride-up leg",
                                        "sizes S to XXL", "breathable stretch fabric"]),
        ("women's wireless bra", ["removable padding", "adjustable straps",
                                  "smooth seam-free cups", "sizes 32A to 40DD"]),
        ("women's tailored blazer", ["single-button fastening", "flap pockets",
                                     "half lined", "sizes 6 to 18"]),
        ("{aud} trench coat", ["double-breasted front", "detachable belt",
                               "storm flap", "water-resistant cotton gabardine"]),
        ("{aud} ribbed beanie", ["fold-over cuff", "one size fits most",
                                 "soft stretch knit", "warm for winter"]),
        ("{aud} knitted scarf", ["fringed ends", "extra long at 180cm",
                                 "soft and warm", "gift boxed"]),
        ("{aud} canvas sneakers", ["vulcanised rubber sole", "cushioned insole",
                                   "lace-up front", "UK sizes 3 to 12"]),
        ("women's suede ankle boots", ["block heel", "side zip",
                                       "cushioned footbed", "UK sizes 3 to 8"]),
        ("{aud} leather sandals", ["adjustable buckle straps", "moulded footbed",
                                   "rubber outsole", "sizes 3 to 11"]),
        ("men's cargo shorts", ["six pockets", "belt loops",
                                "knee-length cut", "waist sizes 30 to 42"]),
        ("men's swim shorts", ["quick-dry fabric", "mesh lining",
                               "drawstring waist", "side pockets"]),
        ("{aud} fleece gilet", ["full-length zip", "zipped hand pockets",
                                "stand-up collar", "anti-pill finish"]),
        ("{aud} corduroy shirt jacket", ["chest flap pockets", "snap buttons",
                                         "boxy fit", "soft needlecord"]),
        ("kids' school uniform polo shirts, pack of 3", ["ages 3 to 12", "stain-resistant finish",
                                                          "easy iron", "name label inside"]),
    ],
    "features": ["machine washable at 30°C", "ethically made", "true to size",
                 "easy-care fabric", "free returns on all sizes", "soft and breathable",
                 "colour-fast dyes", "timeless cut"],
    "slots": {
        "aud": ["men's", "women's", "unisex", "men's", "women's"],
        "color": ["navy", "olive", "charcoal", "heather grey", "cream", "burgundy",
                  "mustard", "black", "sage green", "rust", "stone", "dusty pink"],
        "material": ["100% organic cotton", "merino wool", "pure linen", "recycled polyester",
                     "bamboo viscose", "cashmere blend", "cotton-modal jersey",
                     "heavyweight cotton", "Tencel lyocell"],
        "fit": ["slim fit", "relaxed fit", "regular fit", "oversized fit", "tailored fit"],
        "use": ["everyday wear", "the office", "weekends", "layering in autumn",
                "travel", "casual Fridays", "cold winter days", "summer holidays"],
    },
    "templates": [
        "{brand} {product} in {color}. Made from {material} in a {fit}: {d1}, {d2}, {d3}. {Feature}.",
        "{brand} {product} in {color}, made from {material}. {D1}, {d2}.",
        "{Product} by {brand} - {fit}, {material}, {d1}.",
        "{brand} {product}: {d1}, {d2}. Colour: {color}. {Feature}.",
        "Classic {product} from {brand} in {material}, {feature}. Perfect for {use}.",
        "{brand} {product}, {color}, {fit}. {D1}; {feature}.",
        "{Product} ({color}) in {material} - {d1}, {d2}. From {brand}.",
        "{brand} {product} for {use}: {material}, {d1}.",
        "Soft {material} {product} by {brand}, {fit}. {D1}. Available in {color}.",
        "{brand} {product} - {d1}, {d2}, {feature}.",
        "Wardrobe staple: {brand} {product} in {color}, {d1}.",
    ],
    "ambiguous": [
        "{brand} women's high-waisted leggings with squat-proof fabric and a phone side pocket, sizes XS to XL.",
        "{brand} men's waterproof shell jacket with taped seams and packable hood, sizes S to XXL.",
        "{brand} kids' dinosaur print pyjama set in soft cotton with glow-in-the-dark details, ages 3 to 8.",
        "{brand} heated gloves with rechargeable battery packs and touchscreen-friendly fingertips.",
        "{brand} men's running shorts with built-in liner, reflective trims and zipped back pocket.",
        "{brand} matching family Christmas jumpers with reindeer pattern, adult and kids' sizes.",
        "{brand} unisex satin-lined sleep cap that protects curls and reduces frizz overnight.",
        "{brand} thermal base layer top for skiing and cold-weather hiking, women's sizes 6 to 18.",
    ],
}

CATEGORIES["home_kitchen"] = {
    "brands": ["Hearthwell", "Copper & Oak", "Nestwise", "Kitchara", "Larder Lane",
               "Dunmore Home", "Bellacasa", "Simmerly", "Ovenbird", "Greystone Living"],
    "products": [
        ("28cm non-stick frying pan", ["PFOA-free ceramic coating", "induction compatible",
                                       "stay-cool handle", "oven safe to 220°C"]),
        ("cast iron skillet", ["pre-seasoned and ready to use", "works on all hobs",
                               "helper handle for easy lifting", "holds heat evenly"]),
        ("8-inch chef's knife", ["German stainless steel blade", "full tang",
                                 "ergonomic pakkawood handle", "hand-sharpened 15-degree edge"]),
        ("6-piece knife block set", ["forged blades", "acacia wood block",
                                     "includes kitchen shears", "built-in sharpener"]),
        ("end-grain cutting board", ["juice groove around the edge", "non-slip feet",
                                     "reversible", "large 45 x 30cm surface"]),
        ("5.5L stand mixer", ["10 speed settings", "dough hook, whisk and beater included",
                              "tilt-head design", "splash guard"]),
        ("high-speed blender", ["1200W motor", "1.8L BPA-free jug",
                                "self-cleaning programme", "crushes ice in seconds"]),
        ("5.5L air fryer", ["uses up to 80% less oil", "eight preset programmes",
                            "dishwasher-safe basket", "digital touch panel"]),
        ("4-slice toaster", ["six browning levels", "defrost and reheat functions",
                             "extra-wide slots", "removable crumb tray"]),
        ("1.7L electric kettle", ["rapid boil", "limescale filter",
                                  "360-degree swivel base", "auto shut-off"]),
        ("filter coffee maker", ["12-cup glass carafe", "programmable timer",
                                 "keep-warm hot plate", "reusable filter"]),
        ("French press", ["1-litre capacity", "double-wall insulation",
                          "four-level filtration", "borosilicate glass beaker"]),
        ("food storage container set", ["24 pieces with snap-lock lids", "leak-proof seals",
                                        "freezer, microwave and dishwasher safe",
                                        "stackable to save space"]),
        ("16-piece dinnerware set", ["service for four", "reactive glaze finish",
                                     "chip-resistant stoneware", "microwave safe"]),
        ("set of 4 wine glasses", ["lead-free crystal", "thin laser-cut rim",
                                   "500ml bowl", "dishwasher safe"]),
        ("bath towel set", ["two bath towels, two hand towels and two face cloths",
                            "600gsm weight", "quick-drying loops", "soft zero-twist yarn"]),
        ("double bed sheet set", ["400 thread count", "deep-pocket fitted sheet",
                                  "two pillowcases included", "sateen weave"]),
        ("king-size duvet cover set", ["hidden button closure", "corner ties",
                                       "matching pillowcases", "stonewashed finish"]),
        ("memory foam pillow", ["contoured for neck support", "removable washable cover",
                                "medium-firm feel", "hypoallergenic"]),
        ("chunky knit throw blanket", ["130 x 170cm", "hand-knitted look",
                                       "soft and warm for the sofa", "machine washable"]),
        ("pair of blackout curtains", ["thermal insulated", "eyelet heading",
                                       "block up to 99% of light", "width 117cm each"]),
        ("cordless stick vacuum cleaner", ["40-minute runtime", "converts to a handheld",
                                           "LED floor head", "washable HEPA filter"]),
        ("spin mop and bucket set", ["foot pedal spin dryer", "two microfibre mop heads",
                                     "extendable handle", "splash-proof bucket"]),
        ("6.5L slow cooker", ["three heat settings", "removable ceramic pot",
                              "keep-warm function", "tempered glass lid"]),
        ("stainless steel mixing bowls", ["set of five nesting sizes", "non-slip silicone base",
                                          "airtight lids", "measurement markings"]),
        ("two-tier dish drying rack", ["rust-proof frame", "cutlery holder",
                                       "drip tray with spout", "fits small counters"]),
        ("rotating spice rack", ["includes 20 glass jars", "pre-printed labels",
                                 "carousel design", "countertop or cupboard"]),
        ("ceramic table lamp", ["linen drum shade", "E27 bulb fitting",
                                "inline switch", "height 45cm"]),
        ("woven storage baskets, set of 3", ["seagrass weave", "sturdy handles",
                                             "nesting sizes", "fits standard shelving"]),
        ("enamelled cast iron casserole dish", ["24cm, 4.2L", "tight-fitting lid",
                                                "chip-resistant enamel", "suitable for oven and hob"]),
        ("silent wall clock", ["sweep movement with no ticking", "30cm diameter",
                               "glass front", "runs on one AA battery"]),
    ],
    "features": ["dishwasher-safe parts", "a 5-year guarantee", "an easy-clean finish",
                 "a space-saving design", "gift-ready packaging",
                 "a modern Scandinavian look", "everyday durability",
                 "BPA-free materials"],
    "slots": {
        "color": ["matte black", "cream", "sage green", "slate grey", "terracotta",
                  "duck-egg blue", "white", "charcoal", "natural"],
        "material": ["stainless steel", "bamboo", "borosilicate glass", "stoneware",
                     "enamelled steel", "acacia wood", "cotton", "ceramic"],
        "use": ["busy family kitchens", "small apartments", "weekday meal prep",
                "entertaining guests", "first homes", "everyday cooking",
                "guest bedrooms", "cosy evenings in"],
    },
    "templates": [
        "{brand} {product} in {color}, designed for {use}. {D1}, {d2} and {d3}, plus {feature}.",
        "{brand} {product} in {color} - {d1}, {d2}.",
        "{Product} from {brand} - {d1}, {d2}, {feature}.",
        "{brand} {product}: {d1}. {D2}. Ideal for {use}.",
        "Refresh your home with the {brand} {product} in {color}: {d1}.",
        "{brand} {product} ({color}) with {feature}. {D1}.",
        "{Product} by {brand} for {use}, with {feature}. {D1}.",
        "Everyday {product} from {brand}: {d1}, {d2}.",
        "{brand} {product} - {color} - {d1}, {feature}.",
        "Built for {use}: the {brand} {product}. {D1}; {d2}.",
        "{brand} {product}. {D1}; {d2}; {feature}.",
    ],
    "ambiguous": [
        "{brand} bamboo cookbook stand that also holds tablets, with an adjustable reading angle and page holders.",
        "{brand} robot vacuum with app control, Wi-Fi scheduling and automatic recharging for carpets and hard floors.",
        "{brand} hand-poured soy candle in lavender and vanilla with a 40-hour burn time and cotton wick.",
        "{brand} rechargeable milk frother and hot chocolate maker with induction heating and four settings.",
        "{brand} insulated picnic cooler bag with leak-proof lining, keeps food cold for 12 hours.",
        "{brand} bathroom shower caddy with razor hooks and soap dish for shampoo and body wash bottles.",
        "{brand} washable pet-hair remover roller for sofas, beds and car seats, no refills needed.",
        "{brand} glass jar set for storing pasta, rice, cereal and coffee beans with airtight bamboo lids.",
    ],
}

CATEGORIES["beauty"] = {
    "brands": ["Lumiere Bloom", "Dewbright", "Velvetleaf", "Auralis", "Petal & Pine",
               "Skinsmith", "Nuvelle", "Glowra", "Hazel Harbor", "Mirelle"],
    "products": [
        ("vitamin C serum", ["15% L-ascorbic acid", "brightens dull skin",
                             "fades dark spots", "30ml dropper bottle"]),
        ("hyaluronic acid moisturiser", ["24-hour hydration", "lightweight gel-cream texture",
                                         "plumps fine lines", "50ml jar"]),
        ("retinol night cream", ["0.3% encapsulated retinol", "smooths texture overnight",
                                 "with soothing ceramides", "50ml"]),
        ("mineral sunscreen SPF 50", ["broad-spectrum UVA/UVB protection",
                                      "no white cast", "water resistant for 80 minutes", "50ml tube"]),
        ("micellar cleansing water", ["removes waterproof makeup", "no rinsing needed",
                                      "soothing for eyes", "400ml bottle"]),
        ("foaming face cleanser", ["with salicylic acid", "clears pores",
                                   "pH-balanced formula", "150ml pump bottle"]),
        ("pink clay face mask", ["detoxifies and refines pores", "with rose extract",
                                 "use twice a week", "75ml"]),
        ("hydrating sheet masks, pack of 10", ["soaked in aloe and green tea",
                                               "biodegradable fibre sheets",
                                               "calms redness", "15-minute treatment"]),
        ("satin lipstick", ["long-wearing colour", "enriched with shea butter",
                            "shade Rosewood", "shade Brick Red"]),
        ("tinted lip balm", ["SPF 15", "sheer buildable tint",
                             "nourishing beeswax", "cherry flavour"]),
        ("volumising mascara", ["curved brush", "smudge-proof for 24 hours",
                                "builds lashes without clumps", "jet black"]),
        ("liquid eyeliner pen", ["ultra-fine felt tip", "waterproof formula",
                                 "intense matte black", "easy winged looks"]),
        ("matte liquid foundation", ["medium to full coverage", "40 shades",
                                     "oil-free", "30ml glass bottle"]),
        ("creamy concealer", ["covers dark circles and blemishes", "crease-proof",
                              "doe-foot applicator", "12 shades"]),
        ("12-shade eyeshadow palette", ["warm neutral tones", "mix of matte and shimmer finishes",
                                        "highly pigmented", "built-in mirror"]),
        ("powder blush", ["silky finely milled texture", "buildable flush of colour",
                          "shade Peach Glow", "compact with mirror"]),
        ("makeup setting spray", ["locks makeup for 16 hours", "dewy finish",
                                  "with niacinamide", "100ml mist"]),
        ("sulphate-free shampoo", ["for colour-treated hair", "with argan oil",
                                   "adds shine", "300ml bottle"]),
        ("repairing conditioner", ["with keratin and shea", "detangles instantly",
                                   "for dry and damaged hair", "250ml"]),
        ("nourishing hair oil", ["blend of argan and jojoba", "tames frizz",
                                 "heat protection up to 230°C", "100ml"]),
        ("dry shampoo", ["absorbs oil between washes", "adds volume at the roots",
                         "no white residue", "200ml can"]),
        ("shea body lotion", ["48-hour moisture", "non-greasy",
                              "coconut and vanilla scent", "400ml pump"]),
        ("exfoliating body scrub", ["with sea salt and coconut oil", "polishes rough skin",
                                    "grapefruit scent", "300g tub"]),
        ("eau de parfum", ["notes of jasmine, bergamot and amber", "long-lasting",
                           "50ml spray bottle", "elegant glass flacon"]),
        ("gel-effect nail polish", ["chip-resistant for 10 days", "no UV lamp needed",
                                    "high-shine finish", "shade Ballet Pink"]),
        ("12-piece makeup brush set", ["soft synthetic bristles", "vegan and cruelty-free",
                                       "travel pouch included", "for powder, cream and liquid"]),
        ("beard oil", ["softens coarse hair", "with cedarwood and argan oil",
                       "reduces itch", "30ml bottle"]),
        ("natural deodorant", ["aluminium-free", "48-hour odour protection",
                               "with baking soda and charcoal", "refillable case"]),
        ("intensive hand cream", ["with 10% urea", "for very dry, cracked hands",
                                  "fast-absorbing", "75ml tube"]),
        ("under-eye patches, 30 pairs", ["with caffeine and peptides", "reduces puffiness",
                                         "cooling gel", "spatula included"]),
    ],
    "features": ["cruelty-free", "vegan", "fragrance-free", "dermatologist tested",
                 "paraben-free", "non-comedogenic", "suitable for sensitive skin",
                 "made with natural extracts"],
    "slots": {
        "skin": ["dry skin", "oily skin", "combination skin", "sensitive skin", "normal skin",
                 "mature skin", "acne-prone skin", "all skin types"],
        "use": ["a morning routine", "an evening routine", "everyday glam",
                "self-care Sundays", "travel", "a natural no-makeup look",
                "special occasions", "daily use"],
    },
    "templates": [
        "{brand} {product} for {skin}. {D1}, {d2} and {d3}. {Feature} and {feature2}, ideal for {use}.",
        "{brand} {product} for {skin} - {d1}, {d2}. {Feature}.",
        "{Product} by {brand}: {d1} and {d2}. {Feature} and {feature2}.",
        "{brand} {product}, {d1}. {Feature}, perfect for {use}.",
        "{brand} {product} - {d1}, {d2}. Suitable for {skin}.",
        "Clean beauty: {brand} {product}, {feature} and {feature2}, {d1}.",
        "{Product} from {brand}: {d1}. Great for {use}.",
        "{brand} {product} - {feature}, {d1}, {d2}.",
        "Add the {brand} {product} to {use}: {d1}, {feature}.",
        "{brand} {product}. {D1}. {D2}. {Feature}.",
        "{Product} by {brand}, made for {skin}: {d1}, {feature}.",
    ],
    "ambiguous": [
        "{brand} ionic hair dryer, 2000W with diffuser and concentrator nozzle, three heat settings and cool shot.",
        "{brand} sport sunscreen stick SPF 50, sweat-resistant for running, cycling and hiking.",
        "{brand} tear-free kids' bubble bath with strawberry scent and a free rubber duck.",
        "{brand} collagen beauty gummies with biotin, berry flavour, 60 chewable gummies.",
        "{brand} acrylic makeup organiser with six drawers for brushes, lipsticks and palettes.",
        "{brand} mulberry silk pillowcase that helps reduce hair frizz and sleep creases.",
        "{brand} LED light therapy face mask with red and blue light modes and rechargeable battery.",
        "{brand} organic cold-pressed coconut oil for hair, skin and body, 200ml glass jar.",
    ],
}

CATEGORIES["sports_outdoors"] = {
    "brands": ["Trailforge", "Summit Peak", "Kinetix", "Ridgeback Gear", "Apexline",
               "Bluewater Outfitters", "Stridewell", "Ironvale Fitness", "Camp Ember",
               "Pathfinder Co."],
    "products": [
        ("6mm yoga mat", ["non-slip textured surface", "alignment lines",
                          "carry strap included", "183 x 61cm"]),
        ("pair of hex dumbbells", ["rubber-coated heads", "knurled chrome handles",
                                   "sold in 2kg to 20kg pairs", "anti-roll shape"]),
        ("adjustable kettlebell", ["adjusts from 8kg to 16kg", "quick-select dial",
                                   "wide powder-coated handle", "flat base"]),
        ("resistance band set", ["five resistance levels", "door anchor and ankle straps",
                                 "foam handles", "latex-free"]),
        ("speed jump rope", ["ball-bearing handles", "adjustable steel cable",
                             "spare cable included", "for double-unders"]),
        ("high-density foam roller", ["textured massage surface", "45cm length",
                                      "supports up to 150kg", "eases muscle soreness"]),
        ("2-person camping tent", ["sets up in five minutes", "3000mm waterproof flysheet",
                                   "two doors and vestibules", "weighs 2.1kg"]),
        ("3-season sleeping bag", ["comfort rating 2°C", "mummy shape",
                                   "compression sack included", "two-way zip"]),
        ("40L hiking backpack", ["ventilated back panel", "integrated rain cover",
                                 "hip belt pockets", "hydration sleeve"]),
        ("carbon trekking poles", ["flick-lock length adjustment", "cork grips",
                                   "weighs 220g per pole", "tungsten tips and rubber feet"]),
        ("rechargeable headlamp", ["400 lumens", "red night-vision mode",
                                   "IPX4 weather resistant", "USB-C charging"]),
        ("portable camping stove", ["folds to pocket size", "piezo ignition",
                                    "boils a litre in four minutes", "fits standard gas canisters"]),
        ("insulated sports water bottle", ["keeps drinks cold for 24 hours",
                                           "leak-proof sport cap", "750ml", "fits bike cages"]),
        ("road cycling helmet", ["18 vents", "MIPS protection",
                                 "adjustable dial fit", "CE certified"]),
        ("padded cycling gloves", ["gel palm padding", "breathable mesh back",
                                   "touchscreen fingertips", "pull-off tabs"]),
        ("graphite tennis racket", ["100 sq in head size", "pre-strung",
                                    "weighs 285g", "cover included"]),
        ("size 5 match football", ["thermo-bonded panels", "FIFA Quality certified",
                                   "butyl bladder for air retention", "for grass and artificial turf"]),
        ("indoor/outdoor basketball", ["official size 7", "composite leather cover",
                                       "deep channels for grip", "ships deflated"]),
        ("golf balls, pack of 12", ["two-piece construction", "low spin for distance",
                                    "soft feel around the greens", "high-visibility yellow"]),
        ("telescopic fishing rod and reel combo", ["collapses to 45cm",
                                                   "spinning reel pre-spooled with line",
                                                   "carbon fibre blank", "tackle box included"]),
        ("two-piece kayak paddle", ["fibreglass shaft", "adjustable feathering angle",
                                    "drip rings", "floats if dropped"]),
        ("climbing harness", ["four gear loops", "auto-locking buckles",
                              "padded waist belt", "UIAA certified"]),
        ("doorway pull-up bar", ["no screws needed", "multiple grip positions",
                                 "holds up to 130kg", "fits frames 62 to 100cm"]),
        ("magnetic exercise bike", ["eight resistance levels", "LCD monitor for speed and calories",
                                    "adjustable seat", "quiet belt drive"]),
        ("anti-fog swim goggles", ["UV protection", "silicone seals",
                                   "adjustable split strap", "mirrored lenses"]),
        ("parachute nylon camping hammock", ["holds up to 200kg", "tree straps included",
                                             "packs into a built-in pouch", "bug net option"]),
        ("hard-sided cooler box", ["keeps ice for five days", "45-litre capacity",
                                   "rubber lid gasket", "tie-down points"]),
        ("badminton set", ["four rackets and three shuttlecocks", "portable net with poles",
                           "carry bag", "for garden and beach"]),
        ("boxing gloves", ["multi-layer foam padding", "hook-and-loop wrist closure",
                           "12oz and 14oz", "breathable lining"]),
        ("ultralight camping chair", ["folds into a stuff sack", "holds up to 120kg",
                                      "aluminium frame", "weighs under 1kg"]),
    ],
    "features": ["durable outdoor-grade materials", "a lifetime warranty",
                 "lightweight construction", "an included carry bag",
                 "weather-resistant materials", "a beginner-friendly design",
                 "athlete-tested construction", "compact storage"],
    "slots": {
        "activity": ["home workouts", "weekend hikes", "camping trips", "the gym",
                     "marathon training", "trail running", "backpacking", "team practice",
                     "HIIT sessions", "festival season"],
        "color": ["black", "forest green", "orange", "navy", "slate", "red", "teal"],
    },
    "templates": [
        "{brand} {product} for {activity}: {d1}, {d2} and {d3}. Comes in {color} with {feature}.",
        "{brand} {product} - {d1}, {d2}. Built for {activity}.",
        "{Product} by {brand} - {d1}, {d2}, {feature}.",
        "{brand} {product} in {color}: {d1}. Ideal for {activity}.",
        "Gear up for {activity} with the {brand} {product}: {d1}, {feature}.",
        "{brand} {product} ({color}) - {d1}; {d2}.",
        "{Product} from {brand}, {d1}. {Feature}.",
        "{brand} {product}: {d1}. {D2}. Great for {activity}.",
        "Train harder with the {brand} {product} - {d1}, {feature}.",
        "{brand} {product} with {feature}: {d1}. Perfect for {activity}.",
        "Outdoor-ready {product} by {brand}: {d1}, {d2}.",
    ],
    "ambiguous": [
        "{brand} kids' football, size 3 with soft-touch cover, great for back garden play, ages 4 to 8.",
        "{brand} GPS bike computer with heart-rate sensor pairing, turn-by-turn navigation and 20-hour battery.",
        "{brand} tow-hitch bike rack for cars, carries two bikes with locking arms and tilt-away design.",
        "{brand} men's moisture-wicking running T-shirt with reflective logo and flatlock seams.",
        "{brand} whey protein powder, chocolate flavour, 25g protein per serving, 1kg pouch.",
        "{brand} hands-free running leash for dogs with bungee section and adjustable waist belt.",
        "{brand} nesting camping cookware set with pot, pan, two mugs and folding spork.",
        "{brand} junior scooter with light-up wheels and adjustable handlebar for ages 5 and up.",
    ],
}

CATEGORIES["toys_games"] = {
    "brands": ["Wobblewick", "Tinker Tots", "Puzzleberry", "Brickhaven", "Playnest",
               "Jolly Otter", "Starlit Toys", "Zoomzoo", "Marble & Moss Games", "Cubbyhole"],
    "products": [
        ("500-piece building brick set", ["builds a fire station with three minifigures",
                                          "compatible with major brick brands",
                                          "sorting tray included", "step-by-step instructions"]),
        ("1000-piece jigsaw puzzle", ["illustrated map of Europe", "thick blue-board pieces",
                                      "poster included for reference", "finished size 70 x 50cm"]),
        ("family strategy board game", ["trade, build and settle an island",
                                        "60-minute playing time", "high-quality wooden pieces",
                                        "different every time"]),
        ("party card game", ["hilarious prompts for game night", "playing time 20 minutes",
                             "easy to learn in five minutes", "expansion-ready box"]),
        ("cooperative board game", ["work together to stop the outbreak",
                                    "45-minute play time", "five difficulty levels",
                                    "great for families"]),
        ("plush teddy bear", ["super-soft fur", "embroidered eyes",
                              "30cm tall", "surface washable"]),
        ("wooden doll's house", ["three storeys and 15 furniture pieces",
                                 "opening front", "hand-painted details", "working doorbell"]),
        ("fashion doll with wardrobe", ["five outfits and shoes", "bendable limbs",
                                        "fold-out closet", "accessory pack included"]),
        ("posable action figure", ["22 points of articulation", "interchangeable hands",
                                   "15cm scale", "includes blaster accessory"]),
        ("wooden train set", ["50 pieces with bridge and tunnel", "magnetic carriages",
                              "compatible with major track brands", "storage box"]),
        ("pretend play kitchen", ["lights and sounds on the hob", "clicking oven knobs",
                                  "includes pots and utensils", "sturdy MDF build"]),
        ("magnetic building tiles", ["100-piece set", "strong embedded magnets",
                                     "translucent bright colours", "idea booklet included"]),
        ("STEM coding robot kit", ["build and program five robots", "app with block-based coding",
                                   "screen-free coding cards", "rechargeable battery"]),
        ("glitter slime kit", ["make 12 slimes", "with charms and colourants",
                               "non-toxic ingredients", "no-mess tray"]),
        ("modelling dough set", ["10 tubs of colours", "extruder, cutters and rolling pin",
                                 "non-toxic", "wheat-free dough"]),
        ("double-sided art easel", ["chalkboard and whiteboard sides", "paper roll holder",
                                    "adjustable height", "storage tray"]),
        ("wooden shape puzzle", ["chunky pegs for little hands", "farm animal pieces",
                                 "painted with water-based paints", "sturdy base"]),
        ("marble run set", ["130 pieces", "build tracks, funnels and spirals",
                            "includes 30 marbles", "endless combinations"]),
        ("water blaster, 2-pack", ["shoots up to 10 metres", "easy-fill reservoir",
                                   "pump-action", "for garden battles"]),
        ("stacking rings", ["seven bright rings", "wobbly base", "soft textured edges",
                            "encourages hand-eye coordination"]),
        ("musical keyboard toy", ["37 keys", "demo songs and microphone",
                                  "record and playback function", "battery operated"]),
        ("dinosaur figure set", ["12 realistic dinosaurs", "fact cards included",
                                 "hand-painted details", "sizes up to 20cm"]),
        ("3x3 speed cube", ["smooth corner-cutting", "stickerless design",
                            "adjustable tension", "solution guide included"]),
        ("wooden tea party set", ["teapot, cups and cake slices", "velcro cake to cut",
                                  "carry tray", "encourages role play"]),
        ("toy tool bench", ["hammer, saw and screwdriver", "working vice",
                            "30 accessories", "chunky nuts and bolts"]),
        ("classic chess and draughts set", ["folding wooden board", "weighted pieces",
                                            "felt bases", "storage inside the board"]),
        ("interactive talking globe", ["tap the smart pen for facts",
                                       "over 1,000 questions and quizzes",
                                       "capitals and flags", "volume control"]),
        ("dress-up costume set", ["knight costume with shield", "fits ages 3 to 6",
                                  "machine washable", "hook-and-loop fastening"]),
        ("bath toy boat set", ["floating boats and squirters", "mould-resistant design",
                               "storage net", "suction cups"]),
        ("giant floor puzzle", ["48 large pieces", "alphabet theme",
                                "measures 90 x 60cm", "wipe-clean finish"]),
    ],
    "features": ["safety tested to EN71", "great as a birthday gift",
                 "encourages creativity", "builds fine motor skills", "hours of screen-free fun",
                 "a sturdy storage box", "supports early learning"],
    "slots": {
        "age": ["ages 3+", "ages 6+", "ages 8+", "ages 10+", "ages 12+",
                "18 months and up", "ages 4 to 8", "ages 5+"],
        "occasion": ["birthdays", "rainy days", "family game night", "Christmas",
                     "sleepovers", "classroom play", "long car journeys"],
    },
    "templates": [
        "{brand} {product} for {age}: {d1}, {d2} and {d3}. {Feature} - a great pick for {occasion}.",
        "{brand} {product} - {d1}, {d2}. Suitable for {age}.",
        "{Product} by {brand}: {d1}. {Feature}. Recommended for {age}.",
        "{brand} {product} for {occasion}: {d1}, {d2}.",
        "Fun {product} from {brand} ({age}) - {d1}, {feature}.",
        "{brand} {product}: {d1}; {d2}. Perfect for {occasion}.",
        "{Product} ({age}) by {brand}. {D1}. {Feature}.",
        "{brand} {product} - {feature} - {d1}. {Age}.",
        "Gift idea for {occasion}: the {brand} {product}, {d1}.",
        "{brand} {product}. {D1}. {D2}. For {age}.",
        "{brand} {product}, {age}: {d1}. {Feature}.",
    ],
    "ambiguous": [
        "{brand} remote control monster truck, 1:16 scale with 2.4GHz controller and rechargeable battery, ages 8+.",
        "{brand} mini camera drone for kids with one-key take-off, headless mode and 720p camera, ages 10+.",
        "{brand} soft foam football for kids, safe for indoor play and easy to catch, ages 3+.",
        "{brand} washable play makeup set for girls with nail polish, lip gloss and glittery eyeshadow.",
        "{brand} interactive robot puppy that barks, wags its tail and follows voice commands, ages 4+.",
        "{brand} story dice game where players roll and tell tales together, great for young readers, ages 6+.",
        "{brand} kids' stainless steel play cookware set with pots, pans and utensils for toy kitchens.",
        "{brand} kids' sticker and activity book bundle with 500 reusable stickers and puzzles, ages 4+.",
    ],
}

# Books are composed slightly differently: the "product" is a genre with plot
# hooks, and the brand slot is an invented publisher.  Titles and authors are
# generated from small word lists.
CATEGORIES["books"] = {
    "brands": ["Ashgrove Press", "Lanternfield Books", "Quill & Harbor", "Meridian House",
               "Foxglove Publishing", "Inkwell Street", "Bramble Books", "Northlight Editions"],
    "products": [
        ("psychological thriller", ["a missing sister and a house full of secrets",
                                    "a therapist who suspects her own patient",
                                    "nothing is what it seems after the wedding",
                                    "a twist you will not see coming"]),
        ("crime novel", ["a retired detective reopens a cold case",
                         "a body found on the tidal flats", "the third Inspector Hale mystery",
                         "a gripping police procedural"]),
        ("cosy mystery", ["a village bakery and a poisoned scone",
                          "an amateur sleuth and her clever cat", "murder at the book club",
                          "light-hearted whodunnit"]),
        ("epic fantasy novel", ["a thief, a dragon and a broken crown",
                                "book one of the Emberfall trilogy", "a world of warring mage-houses",
                                "includes a fold-out map"]),
        ("science fiction novel", ["a generation ship drifting off course",
                                   "first contact told through three voices",
                                   "a heist on a Martian space elevator",
                                   "hard SF with a human heart"]),
        ("historical fiction novel", ["two sisters in wartime London",
                                      "a mapmaker in sixteenth-century Venice",
                                      "based on true events", "sweeping family saga"]),
        ("romance novel", ["enemies to lovers in a seaside bookshop",
                           "a fake dating scheme that gets real", "a second-chance summer romance",
                           "feel-good happily ever after"]),
        ("literary fiction novel", ["shortlisted for a major prize",
                                    "a family reunites after forty years",
                                    "a quiet, luminous story of grief and hope",
                                    "book club favourite"]),
        ("young adult novel", ["a teen hacker uncovers a school conspiracy",
                               "magic academy and a forbidden rivalry",
                               "coming-of-age story", "for readers 14 and up"]),
        ("children's picture book", ["a shy hedgehog learns to make friends",
                                     "bright full-colour illustrations", "rhyming text to read aloud",
                                     "perfect for bedtime"]),
        ("early chapter book", ["short chapters for newly independent readers",
                                "illustrations on every page", "book one of a funny series",
                                "for ages 6 to 9"]),
        ("graphic novel", ["full-colour artwork", "a mecha pilot and her robot",
                           "collects issues one to six", "award-winning creator team"]),
        ("memoir", ["a chef's journey from dishwasher to head cook",
                    "growing up between two cultures", "candid, funny and moving",
                    "an unforgettable true story"]),
        ("biography", ["the life of a pioneering aviator", "drawn from private letters",
                       "includes 16 pages of photographs", "meticulously researched"]),
        ("self-help book", ["small habits that lead to big change",
                            "practical exercises at the end of each chapter",
                            "a guide to calmer, more focused days", "international bestseller"]),
        ("popular science book", ["how the brain builds memories",
                                  "the hidden life of fungi", "physics explained without equations",
                                  "accessible and entertaining"]),
        ("history book", ["the rise and fall of the Silk Road cities",
                          "the untold story of the Hanseatic traders",
                          "a new history of the Industrial Revolution",
                          "with maps and timelines"]),
        ("poetry collection", ["poems about love, loss and the sea",
                               "debut collection", "sixty new poems", "winner of a national poetry prize"]),
        ("short story collection", ["twelve eerie tales", "stories set across one city",
                                    "darkly funny", "includes a prize-winning story"]),
        ("travel guide", ["covers Portugal and the Azores", "maps, itineraries and budget tips",
                          "updated 2024 edition", "best places to eat and stay"]),
        ("bird identification field guide", ["over 300 species", "colour illustrations",
                                             "range maps", "pocket-sized format"]),
        ("language learning workbook", ["beginner Spanish in 12 weeks",
                                        "with audio download", "grammar drills and answer key",
                                        "CEFR levels A1 to A2"]),
        ("programming textbook", ["learn Python from scratch",
                                  "hands-on projects in every chapter",
                                  "covers data structures and testing", "third edition"]),
        ("adult colouring book", ["50 intricate mandala designs", "single-sided pages",
                                  "relaxing and mindful", "perforated for framing"]),
        ("board book for toddlers", ["touch-and-feel textures", "first words and animals",
                                     "sturdy rounded pages", "for ages 0 to 3"]),
        ("true crime book", ["the case that shocked a small town",
                             "based on trial transcripts", "gripping investigative reporting",
                             "new afterword by the author"]),
        ("business book", ["lessons from 100 start-up founders",
                           "how to lead remote teams", "strategy made simple",
                           "Financial Times book of the year"]),
        ("philosophy introduction", ["big questions in plain English",
                                     "from Socrates to Simone de Beauvoir",
                                     "ideal for beginners", "short and readable"]),
        ("gardening handbook", ["grow your own vegetables in small spaces",
                                "month-by-month planting calendar",
                                "hundreds of photographs", "organic methods"]),
        ("boxed set", ["the complete seven-book fantasy series", "collector's slipcase",
                       "paperback editions", "perfect gift for young readers"]),
    ],
    "features": ["an instant bestseller", "a Sunday Times bestseller", "now a major TV series",
                 "signed by the author", "with a new foreword", "a reader favourite",
                 "shortlisted for the Book of the Year award", "a perfect gift for readers"],
    "slots": {
        "format": ["paperback", "hardcover", "Kindle-size paperback", "large print edition",
                   "illustrated hardback", "trade paperback", "collector's edition"],
        "pages": ["192", "224", "256", "288", "320", "352", "384", "416", "448", "512", "640"],
        "reader": ["fans of twisty plots", "curious minds", "book clubs", "young readers",
                   "anyone who loves a good story", "beach reading", "long winter evenings"],
    },
    "templates": [
        "{Title} by {author} ({format}, {brand}). A {product}: {d1}; {d2}; {d3}. {Feature}.",
        "{Title} by {author} - {format} {product}: {d1}. {Pages} pages.",
        "{Title}, {author}. {Product} in {format}: {d1}, {d2}.",
        "{author} - {Title} ({format}, {pages} pages). {D1}. {Feature}.",
        "{Title}: {d1}. {Product} by {author}, published by {brand}.",
        "{format} {product}: {Title} by {author}. {D1}; {feature}.",
        "{Title} by {author}. {Feature}: {d1}. Perfect for {reader}.",
        "{brand} presents {Title}, {product} by {author} - {d1}, {d2}.",
        "{Title} ({format}) by {author}: {d1}. {Pages} pages, {brand}.",
        "{Product}: {Title}, by {author}. {D1}. Ideal for {reader}.",
        "{Title} - {author}. {D1}. {D2}. {Format}, {pages} pages.",
    ],
    "ambiguous": [
        "The Weeknight Table by Rosa Calloway: 120 quick dinners with a cast iron pan and pantry staples, hardcover, {brand}.",
        "Happy Puppy, Happy Home by Dr Ellen Marsh: a step-by-step guide to training and caring for your new dog, {brand}.",
        "Press and Play Farm Sounds from {brand}: an interactive sound book for toddlers with ten animal noise buttons.",
        "Hatchback Repair and Service Manual ({brand}): step-by-step maintenance for brakes, oil changes and electrics.",
        "Skin Deep by Nadia Fern: a dermatologist's guide to serums, sunscreen and building a skincare routine, {brand}.",
        "Wild Trails of the North from {brand}: 50 hikes and camping spots with maps, gradients and kit lists.",
        "The Brick Builder's Idea Book from {brand}: 200 creative models to build with the bricks you already have.",
        "Sourdough and Beyond by Theo Hartley: baking bread, flour types and fermentation explained, {brand} paperback.",
    ],
}

CATEGORIES["grocery"] = {
    "brands": ["Golden Acre", "Harvest Lane", "Sunny Orchard", "Olivara", "Pantry Bloom",
               "Wild Hive", "Terra Mesa", "Brookfield Farms", "Saffron & Salt", "Kettle Creek"],
    "products": [
        ("extra virgin olive oil", ["cold-pressed from Koroneiki olives", "peppery finish",
                                    "1-litre tin", "harvest 2023"]),
        ("basmati rice", ["aged for 12 months", "long, fluffy grains",
                          "5kg bag", "cooks in 12 minutes"]),
        ("whole bean coffee", ["single-origin Colombian", "medium roast with cocoa notes",
                               "1kg bag", "roasted in small batches"]),
        ("green tea bags", ["80 bags", "Japanese sencha", "light and grassy",
                            "plastic-free tea bags"]),
        ("70% dark chocolate bar", ["made with Ecuadorian cocoa", "100g bar",
                                    "notes of red fruit", "pack of 5 bars"]),
        ("crunchy granola", ["with almonds and honey", "oat clusters",
                             "500g bag", "high in fibre"]),
        ("jumbo rolled oats", ["wholegrain", "1kg bag",
                               "ideal for porridge and overnight oats", "grown in Scotland"]),
        ("smooth peanut butter", ["100% peanuts", "no palm oil",
                                  "1kg jar", "no added salt"]),
        ("raw wildflower honey", ["unpasteurised", "340g jar",
                                  "from British beekeepers", "naturally crystallises"]),
        ("bronze-cut spaghetti", ["made with durum wheat semolina", "slow-dried",
                                  "500g, pack of 4", "from Gragnano, Italy"]),
        ("tomato passata", ["smooth sieved Italian tomatoes", "690g bottle",
                            "pack of 6", "no added salt"]),
        ("canned chickpeas", ["400g tins, pack of 12", "in water",
                              "ready to use", "high in protein"]),
        ("unsweetened almond milk", ["1-litre cartons, pack of 6", "fortified with calcium",
                                     "long life", "barista-friendly"]),
        ("flaky sea salt", ["hand-harvested", "250g tub",
                            "pure and mineral-rich", "perfect for finishing"]),
        ("whole black peppercorns", ["Tellicherry grade", "in a refillable grinder",
                                     "bold aroma", "100g"]),
        ("pure maple syrup", ["grade A amber", "from Quebec",
                              "250ml glass bottle", "rich taste"]),
        ("mixed nuts", ["roasted and lightly salted", "cashews, almonds and pecans",
                        "1kg resealable bag", "snack-sized portions"]),
        ("dried mango slices", ["no added sugar", "sulphite-free",
                                "chewy and sweet", "500g"]),
        ("sourdough crackers", ["with rosemary and sea salt", "150g box",
                                "ideal for cheese boards", "baked in small batches"]),
        ("habanero hot sauce", ["fermented for 30 days", "150ml bottle",
                                "fruity heat", "heat level 8/10"]),
        ("naturally brewed soy sauce", ["reduced salt", "500ml bottle",
                                        "aged in wooden barrels", "gluten-free tamari option"]),
        ("coconut water", ["330ml cartons, pack of 12", "not from concentrate",
                           "no added sugar", "rich in electrolytes"]),
        ("sparkling spring water", ["lightly carbonated", "24 x 330ml cans",
                                    "lime and mint", "zero calories"]),
        ("wholegrain breakfast cereal", ["fortified with iron and vitamins", "375g box",
                                         "low in sugar", "crispy flakes"]),
        ("strawberry jam", ["made with 60% fruit", "340g jar",
                            "no artificial flavours", "small-batch"]),
        ("instant ramen noodles, pack of 5", ["spicy miso broth", "ready in three minutes",
                                              "air-dried noodles", "vegan"]),
        ("popcorn kernels", ["1kg bag", "pops big and fluffy",
                             "butterfly variety", "non-GMO"]),
        ("chai latte concentrate", ["with cinnamon, cardamom and ginger", "1-litre carton",
                                    "just add milk", "makes 16 servings"]),
        ("harissa paste", ["roasted red peppers and chilli", "190g jar",
                           "North African recipe", "versatile marinade"]),
        ("red split lentils", ["2kg bag", "quick-cooking", "ideal for dal and soups",
                               "rich in plant protein"]),
    ],
    "features": ["organic", "gluten-free", "non-GMO", "Fairtrade certified", "vegan",
                 "preservative-free", "sustainably sourced", "vegetarian"],
    "slots": {
        "meal": ["breakfast", "quick weeknight dinners", "snacking", "baking",
                 "lunchboxes", "entertaining", "healthy cooking", "the store cupboard"],
    },
    "templates": [
        "{brand} {product}: {d1}, {d2} and {d3}. {Feature} and {feature2}, a staple for {meal}.",
        "{brand} {product} - {d1}, {d2}. {Feature}.",
        "{Product} by {brand}: {d1}. {Feature} and {feature2}.",
        "{brand} {feature} {product}, {d1}. Great for {meal}.",
        "{Product} from {brand}: {d1}, {d2}. Great for {meal}.",
        "{brand} {product}, {feature}: {d1}; {d2}.",
        "Stock up for {meal}: {brand} {product}, {d1}.",
        "{brand} {product}. {D1}. {D2}. {Feature}.",
        "Pantry essential: {brand} {product}, {d1}, {feature}.",
        "{brand} {product} for {meal} - {d1}; {d2}.",
        "{Feature} {product} by {brand}, {d1}, {d2}.",
    ],
    "ambiguous": [
        "{brand} peanut protein bars, 20g protein each, ideal after the gym or a long hike, box of 12.",
        "{brand} organic virgin coconut oil for cooking and baking, also loved as a natural hair mask, 500ml.",
        "{brand} electrolyte drink powder, lemon-lime, 20 sachets for workouts, hiking and hot days.",
        "{brand} gourmet gift hamper with cheeses, chutney and crackers on a reusable wooden serving board.",
        "{brand} chocolate chip cookie baking kit with pre-measured mix and a star-shaped cutter.",
        "{brand} fruity gummy bears for kids' party bags, 30 mini bags, no artificial colours.",
        "{brand} cold brew coffee pitcher packs, 12 filter bags that brew overnight in the fridge.",
        "{brand} bone broth made from grass-fed beef, sipping broth for people and good enough to share.",
    ],
}

CATEGORIES["automotive"] = {
    "brands": ["Roadmaster Pro", "Gearlock", "Torqueline", "AutoNova", "Drivewell",
               "Highway Hawk", "Carvex", "Pitstop Supply", "Ironwheel", "Motoguard"],
    "products": [
        ("front and rear dash cam", ["1440p front and 1080p rear recording", "G-sensor crash detection",
                                     "loop recording", "night vision"]),
        ("car seat covers, full set", ["breathable mesh fabric", "airbag compatible",
                                       "fits most cars and SUVs", "split-bench rear cover"]),
        ("all-weather floor mats", ["deep channels trap water and mud", "trim-to-fit",
                                    "odourless rubber", "set of four"]),
        ("beam wiper blades, pair", ["streak-free wipe", "all-season rubber",
                                     "easy J-hook fitting", "24-inch and 18-inch"]),
        ("5W-30 fully synthetic motor oil", ["5-litre bottle", "meets ACEA C3",
                                             "for petrol and diesel engines", "reduces engine wear"]),
        ("carnauba car wax", ["deep gloss shine", "protects paint for months",
                              "applicator pad included", "easy on, easy off"]),
        ("microfibre drying towel", ["twisted loop weave", "absorbs up to 1 litre",
                                     "scratch-free", "large 90 x 60cm"]),
        ("digital tyre pressure gauge", ["reads 0 to 150 PSI", "backlit display",
                                         "auto shut-off", "angled chuck"]),
        ("portable tyre inflator", ["12V plug-in", "preset auto-stop pressure",
                                    "LED work light", "inflates a tyre in minutes"]),
        ("lithium jump starter", ["2000A peak current", "starts petrol engines up to 8L",
                                  "doubles as a power bank", "reverse polarity protection"]),
        ("smart car battery charger", ["6V and 12V support", "winter mode",
                                       "maintains batteries over storage", "crocodile clips"]),
        ("handheld car vacuum", ["12V plug-in", "crevice and brush tools",
                                 "washable HEPA filter", "5-metre cord"]),
        ("LED headlight bulbs, H7 pair", ["6500K white light", "300% brighter than halogen",
                                          "fanless design", "plug-and-play install"]),
        ("leather steering wheel cover", ["non-slip grip", "fits 37 to 38cm wheels",
                                          "breathable perforated leather", "no smell"]),
        ("vent clip air freshener, 4-pack", ["new car scent", "lasts 60 days each",
                                             "adjustable intensity", "fits horizontal vents"]),
        ("collapsible boot organiser", ["three compartments", "non-slip base",
                                        "folds flat", "tie-down straps"]),
        ("roof rack crossbars", ["aluminium aero profile", "lockable",
                                 "load capacity 75kg", "for raised roof rails"]),
        ("heavy-duty tow strap", ["5-metre length", "breaking strength 10 tonnes",
                                  "reflective stitching", "storage bag"]),
        ("ice scraper and snow brush", ["extends to 100cm", "foam grip",
                                        "pivoting brush head", "tough polycarbonate blade"]),
        ("windscreen sunshade", ["foldable umbrella design", "blocks UV and heat",
                                 "fits most windscreens", "storage sleeve"]),
        ("OBD2 diagnostic scanner", ["reads and clears engine fault codes",
                                     "live sensor data", "Bluetooth app", "works with cars from 2001"]),
        ("ceramic brake pads, front set", ["low dust", "quiet braking",
                                           "wear indicators included", "check fitment by reg"]),
        ("iridium spark plugs, set of 4", ["longer service life", "improved ignition",
                                           "pre-gapped", "for petrol engines"]),
        ("activated carbon cabin air filter", ["filters pollen and odours", "easy replacement",
                                               "OE quality", "recommended every 12 months"]),
        ("waterproof car cover", ["UV-resistant outer layer", "soft cotton lining",
                                  "elastic hem and straps", "fits saloons up to 4.8m"]),
        ("concentrated screenwash", ["protects down to -20°C", "5-litre bottle",
                                     "streak-free", "fresh scent"]),
        ("blind spot mirrors, pair", ["360-degree rotation", "stick-on fitting",
                                      "frameless HD glass", "wider rear view"]),
        ("universal mud flaps, set of 4", ["flexible rubber", "protects paintwork",
                                           "screws included", "trim-to-fit"]),
        ("wheel cleaning brush kit", ["soft bristles safe on alloys", "long-reach barrel brush",
                                      "lug nut brush", "three pieces"]),
        ("reversing camera kit", ["wide 170-degree view", "parking guide lines",
                                  "4.3-inch monitor", "IP68 waterproof camera"]),
    ],
    "features": ["universal fit", "easy DIY installation", "a 3-year warranty",
                 "broad fitment for cars, vans and SUVs", "OE-quality materials",
                 "12V vehicle compatibility", "weatherproof construction",
                 "tested to automotive standards"],
    "slots": {
        "vehicle": ["hatchbacks", "saloons", "SUVs", "vans", "estate cars", "4x4s",
                    "family cars", "pickup trucks"],
        "use": ["road trips", "winter driving", "daily commuting", "weekend detailing",
                "roadside emergencies", "long motorway journeys", "garage maintenance"],
    },
    "templates": [
        "{brand} {product} for {vehicle}: {d1}, {d2} and {d3}. Ideal for {use}, with {feature}.",
        "{brand} {product} - {d1}, {d2}. {Feature}.",
        "{Product} by {brand}: {d1}. Suitable for {vehicle}.",
        "{brand} {product} - {d1}, {feature}. Essential for {use}.",
        "{brand} {product} for {vehicle}: {D1}; {d2}.",
        "{Product} from {brand} - {feature}, {d1}.",
        "Be ready for {use} with the {brand} {product}: {d1}, {d2}.",
        "{brand} {product}. {D1}. {D2}. {Feature}.",
        "Car care: {brand} {product}, {d1}, {feature}.",
        "{brand} {product} ({feature}) - {d1}, ideal for {vehicle}.",
        "Upgrade your car with the {brand} {product}: {d1}.",
    ],
    "ambiguous": [
        "{brand} dashboard phone car mount with one-touch release and adjustable arm, fits phones 4 to 7 inches.",
        "{brand} 12V portable fridge freezer, 30 litres, for road trips, camping and overlanding.",
        "{brand} waterproof dog seat cover hammock for the back seat, scratch-proof with side flaps.",
        "{brand} kids' back seat organiser with tablet holder, pockets for toys, books and snacks.",
        "{brand} Bluetooth FM transmitter with hands-free calling, bass boost and two USB charging ports.",
        "{brand} roof-mounted bike carrier, holds one bike upright, lockable and quick to fit.",
        "{brand} car cleaning bucket kit with microfibre mitts, sponges and wheel brush in a storage bag.",
        "{brand} heated seat cushion with 12V plug and three heat levels for chilly winter mornings.",
    ],
}

CATEGORIES["pet_supplies"] = {
    "brands": ["Pawsome Co.", "Whisker & Wag", "Furrlyn", "Happy Tails", "Barkside",
               "PetNest", "Kibble & Co.", "Tailwind Pets", "Purrfect Day", "Muddy Paws"],
    "products": [
        ("adult dry dog food", ["salmon and sweet potato recipe", "12kg bag",
                                "grain-free", "with glucosamine for joints"]),
        ("grain-free dry cat food", ["70% chicken", "2kg bag",
                                     "supports urinary health", "for indoor cats"]),
        ("wet cat food pouches", ["48 x 85g pouches", "chunks in gravy",
                                  "mixed fish selection", "complete nutrition"]),
        ("puppy food", ["chicken and rice recipe", "DHA for brain development",
                        "small kibble size", "7.5kg bag"]),
        ("durable dog chew toy", ["natural rubber", "for power chewers",
                                  "stuff with treats", "dishwasher safe"]),
        ("cat scratching post", ["sisal rope wrapped", "80cm tall",
                                 "stable weighted base", "dangling pom-pom toy"]),
        ("clumping cat litter", ["99% dust-free", "10-litre bag",
                                 "odour control with activated charcoal", "unscented"]),
        ("hooded cat litter box", ["swing door and carbon filter", "easy-lift lid",
                                   "scoop included", "extra large"]),
        ("orthopaedic dog bed", ["memory foam base", "removable washable cover",
                                 "raised bolster sides", "sizes S to XL"]),
        ("reflective dog lead", ["1.5-metre length", "padded handle",
                                 "strong trigger hook", "night-time visibility"]),
        ("no-pull dog harness", ["front and back clip", "adjustable straps",
                                 "padded breathable chest plate", "sizes XS to XL"]),
        ("personalised dog collar", ["engraved ID plate", "quick-release buckle",
                                     "waterproof biothane", "adjustable fit"]),
        ("airline-approved pet carrier", ["mesh ventilation panels", "fleece pad",
                                          "fits under the seat", "up to 7kg"]),
        ("aquarium filter", ["for tanks up to 100 litres", "three-stage filtration",
                             "quiet pump", "adjustable flow"]),
        ("tropical fish flakes", ["complete daily diet", "enhances colours",
                                  "100g tub", "won't cloud the water"]),
        ("flight bird cage", ["removable tray", "includes perches and feeders",
                              "for budgies and canaries", "wheeled stand"]),
        ("wild bird seed mix", ["sunflower hearts and millet", "5kg bag",
                                "no-mess husk-free blend", "attracts finches"]),
        ("hamster cage", ["two levels with tubes", "exercise wheel included",
                          "deep base to stop bedding spills", "water bottle"]),
        ("small animal bedding", ["paper-based and dust-extracted", "absorbs up to 3x its weight",
                                  "for rabbits and guinea pigs", "56-litre pack"]),
        ("flea and tick spot-on treatment", ["lasts up to four weeks",
                                             "for dogs 10 to 20kg", "three pipettes",
                                             "kills fleas within 24 hours"]),
        ("dental chews for dogs", ["reduce tartar build-up", "28 sticks",
                                   "freshen breath", "for medium dogs"]),
        ("pet water fountain", ["2.5-litre capacity", "triple filtration",
                                "ultra-quiet pump", "encourages cats to drink"]),
        ("puppy training pads, 100 pack", ["leak-proof backing", "attractant scent",
                                           "super-absorbent core", "60 x 60cm"]),
        ("multi-level cat tree", ["cosy condo and hammock", "sisal scratching posts",
                                  "top perch platform", "150cm tall"]),
        ("poop bags, 300 count", ["leak-proof", "lavender scented",
                                  "dispenser included", "extra thick"]),
        ("deshedding grooming brush", ["removes loose undercoat", "self-cleaning button",
                                       "for long and short coats", "comfort grip"]),
        ("reptile heat lamp", ["75W basking bulb", "ceramic lamp holder",
                               "full-spectrum light", "for terrariums"]),
        ("interactive feather cat wand", ["replaceable feather attachments",
                                          "bells and crinkle tail", "telescopic handle",
                                          "keeps indoor cats active"]),
        ("chicken jerky dog treats", ["single-ingredient", "500g bag",
                                      "high in protein", "grain-free"]),
        ("stainless steel pet bowls, set of 2", ["non-slip silicone base",
                                                 "dishwasher safe", "750ml each", "rust-resistant"]),
    ],
    "features": ["vet recommended", "made with natural ingredients", "suitable for all breeds",
                 "tested for pet safety", "a satisfaction guarantee",
                 "recyclable packaging", "loved by pets and owners", "easy to clean"],
    "slots": {
        "pet": ["dogs", "puppies", "cats", "kittens", "small breeds", "large breeds",
                "senior pets", "multi-pet households"],
        "use": ["daily walks", "travel", "indoor living", "training", "playtime",
                "mealtimes", "grooming sessions", "new pet owners"],
    },
    "templates": [
        "{brand} {product} for {pet}: {d1}, {d2} and {d3}. {Feature}, great for {use}.",
        "{brand} {product} - {d1}, {d2}. {Feature}.",
        "{Product} by {brand}: {d1}. Great for {pet}.",
        "{brand} {product}: {d1}, ideal for {use}. {Feature}.",
        "Keep your pet happy with the {brand} {product}: {d1}, {d2}.",
        "{brand} {product}, {feature} - {d1}, {d2}.",
        "{Product} from {brand}, {d1}. Perfect for {use}.",
        "{brand} {product}. {D1}. {D2}. {Feature}.",
        "{brand} {product} for {pet} - {d1}; {feature}.",
        "Pet essentials: {brand} {product}, {d1}.",
        "{Feature}: {brand} {product}, {d1}, {d2}.",
    ],
    "ambiguous": [
        "{brand} oatmeal and aloe dog shampoo, soothing for itchy skin with a fresh coconut scent, 500ml.",
        "{brand} smart automatic pet feeder with app scheduling, voice recording and 4-litre hopper.",
        "{brand} dog raincoat with reflective strip and hood, waterproof and lightweight, sizes XS to XL.",
        "{brand} squeaky plush toy set, five stuffed animals with crinkle paper inside.",
        "{brand} dog car seat belt harness with adjustable tether that clips into any car seat buckle.",
        "{brand} dog life jacket with rescue handle and buoyant foam for swimming and kayaking.",
        "{brand} GPS pet tracker that attaches to any collar, live location and activity monitoring in the app.",
        "{brand} freeze-dried salmon bites, single-ingredient snack with no additives, 100g pouch.",
    ],
}

# Placeholders for books only.
TITLE_ADJ = ["Silent", "Last", "Hidden", "Burning", "Glass", "Winter", "Lost", "Golden",
             "Broken", "Midnight", "Salt", "Paper", "Hollow", "Quiet", "Wild", "Crimson",
             "Distant", "Iron", "Little", "Secret"]
TITLE_NOUN = ["Garden", "Harbour", "Orchard", "Lighthouse", "River", "Kingdom", "Letters",
              "Mountain", "Island", "Daughter", "Library", "Compass", "Clockmaker", "Tide",
              "Summer", "Forest", "Crown", "Atlas", "Bridge", "Wolves"]
TITLE_PATTERNS = ["The {adj} {noun}", "{adj} {noun}", "The {noun} of {place}",
                  "A {adj} {noun}", "The {noun}'s Promise", "Beyond the {adj} {noun}",
                  "When the {noun} Falls", "The {adj} Hour"]
PLACES = ["Ashwick", "Larkmoor", "Venice", "Kestrel Bay", "Eldermere", "Brightwater",
          "the North", "Saltcombe", "Marrowgate", "Ravenhill"]
AUTHOR_FIRST = ["Eleanor", "Marcus", "Priya", "Jonah", "Clara", "Tobias", "Amara", "Felix",
                "Isla", "Rowan", "Hana", "Daniel", "Sofia", "Callum", "Maya", "Owen",
                "Leila", "Gabriel", "Nora", "Samuel"]
AUTHOR_LAST = ["Whitaker", "Okafor", "Lindqvist", "Marlowe", "Ashdown", "Reyes", "Fairbairn",
               "Hollis", "Nakamura", "Thorne", "Castellano", "Pemberton", "Adeyemi",
               "Brennan", "Sorensen", "Vance", "Delacroix", "Kaur", "Ellery", "Mercer"]

FORMATTER = string.Formatter()


def _cap(s):
    return s[:1].upper() + s[1:] if s else s


def book_title(rng):
    pattern = rng.choice(TITLE_PATTERNS)
    return pattern.format(adj=rng.choice(TITLE_ADJ), noun=rng.choice(TITLE_NOUN),
                          place=rng.choice(PLACES))


def fill_template(rng, cat, template):
    """Fill one template for category ``cat`` with random vocabulary."""
    spec = CATEGORIES[cat]
    name, details = rng.choice(spec["products"])
    if "{aud}" in name:
        name = name.replace("{aud}", rng.choice(spec["slots"]["aud"]))
    d1, d2 = rng.sample(details, 2)
    f1, f2 = rng.sample(spec["features"], 2)
    values = {
        "brand": rng.choice(spec["brands"]),
        "product": name,
        "d1": d1,
        "d2": d2,
        "feature": f1,
        "feature2": f2,
    }
    if cat == "books":
        values["title"] = book_title(rng)
        values["author"] = f"{rng.choice(AUTHOR_FIRST)} {rng.choice(AUTHOR_LAST)}"
    for field in {f for _, f, _, _ in FORMATTER.parse(template) if f}:
        key = field.lower()
        if key not in values:
            values[key] = rng.choice(spec["slots"][key])
        if field != key:  # capitalised placeholder, e.g. {D1} or {Product}
            values[field] = _cap(values[key])
    text = template.format(**values)
    text = re.sub(r"\s+", " ", text).strip()
    return _cap(text)


def fill_ambiguous(rng, cat, template):
    spec = CATEGORIES[cat]
    return _cap(template.format(brand=rng.choice(spec["brands"])))


def word_count(text):
    return len(text.split())


def generate(rng):
    """Return {label: [texts]} with PER_LABEL unique texts per label."""
    seen = set()
    by_label = {}
    for cat in LABELS:
        spec = CATEGORIES[cat]
        assert len(spec["products"]) >= 25, cat
        assert len(spec["templates"]) >= 8, cat
        texts = []
        # Borderline listings: each hand-written template used at most once.
        for template in rng.sample(spec["ambiguous"], AMBIGUOUS_PER_LABEL):
            text = fill_ambiguous(rng, cat, template)
            key = text.lower()
            assert key not in seen, text
            seen.add(key)
            texts.append(text)
        # Regular listings: cycle through templates so every template is used.
        attempts = 0
        while len(texts) < PER_LABEL:
            attempts += 1
            if attempts > 100000:
                raise RuntimeError(f"could not generate enough unique texts for {cat}")
            template = spec["templates"][attempts % len(spec["templates"])]
            text = fill_template(rng, cat, template)
            key = text.lower()
            if key in seen or not (MIN_WORDS <= word_count(text) <= MAX_WORDS):
                continue
            seen.add(key)
            texts.append(text)
        by_label[cat] = texts
    return by_label


def split(rng, by_label):
    """Stratified split: fixed numbers per label for train/validation/test."""
    assert sum(SPLIT_SIZES.values()) == PER_LABEL
    splits = {name: [] for name in SPLIT_SIZES}
    for cat in LABELS:
        texts = list(by_label[cat])
        rng.shuffle(texts)
        start = 0
        for name, size in SPLIT_SIZES.items():
            splits[name].extend({"text": t, "label": cat} for t in texts[start:start + size])
            start += size
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def main():
    rng = random.Random(SEED)
    by_label = generate(rng)
    splits = split(rng, by_label)

    out_dir = Path(__file__).resolve().parent / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    # Sanity checks and summary.
    all_texts = [r["text"] for rows in splits.values() for r in rows]
    assert len(all_texts) == len({t.lower() for t in all_texts}), "duplicate texts"
    assert set(r["label"] for rows in splits.values() for r in rows) == set(LABELS)

    print(f"Wrote {len(all_texts)} examples to {out_dir}")
    header = f"{'label':<16}" + "".join(f"{n:>12}" for n in splits) + f"{'total':>8}"
    print(header)
    for cat in LABELS:
        counts = [sum(r["label"] == cat for r in splits[n]) for n in splits]
        print(f"{cat:<16}" + "".join(f"{c:>12}" for c in counts) + f"{sum(counts):>8}")
    totals = [len(splits[n]) for n in splits]
    print(f"{'total':<16}" + "".join(f"{c:>12}" for c in totals) + f"{sum(totals):>8}")
    lengths = [word_count(t) for t in all_texts]
    print(f"Words per text: mean {sum(lengths) / len(lengths):.1f}, "
          f"min {min(lengths)}, max {max(lengths)}")


if __name__ == "__main__":
    main()
