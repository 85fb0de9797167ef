"""Question and caption grammar of the embedded datasets (generator version 3).

Every VQA question *family* asks one thing about a scene; its templates are split
into an eval set and a disjoint train set, and a separate set of rephrase frames
gives T-Gen prompts that share the noun phrase but little else (word overlap
about that of the real E-VQA rephrases). Answer pools are counterfactual edit
targets of the lengths and kinds the real E-VQA file has (single words, two- and
three-word phrases, yes/no, numbers in digits): an edit asks the model to give the
pool's answer for this scene and this family, whatever the scene shows.

Slots: ``{np}`` a singular noun phrase ("the star", "the red shape"), ``{npl}`` a
plural one, ``{where}`` an optional place phrase, ``{color}``, ``{shape}`` and
``{n}`` the scene's own attributes.
"""

from __future__ import annotations

NOUNS = ["shape", "figure", "object", "symbol", "sign", "thing", "item", "design", "drawing", "mark"]
PLURALS = ["shapes", "figures", "objects", "symbols", "signs", "things", "items", "designs", "drawings", "marks"]
WHERE = ["", " in the picture", " in the image", " in this photo", " shown", " here", " in this picture",
         " on the background", " in the scene"]

# family -> eval templates, train templates, rephrase frames, answer pool, weight (share of records)
FAMILIES: dict[str, dict] = {
    "color": {
        "eval": ["What color is {np}{where}?", "What is the color of {np}{where}?", "Which color does {np}{where} have?",
                 "What color are the {npl}{where}?", "What colour is {np}{where}?", "What is the main color of {np}{where}?"],
        "train": ["Tell me the color of {np}{where}.", "What color do the {npl}{where} have?", "Which colour is {np}{where}?",
                  "What color would you call {np}{where}?", "What is the colour of the {npl}{where}?",
                  "Name the color of {np}{where}."],
        "rephrase": ["What hue does {np}{where} have?", "Can you tell the color of {np}{where}?", "In what color is {np}{where} painted?", "Which shade of color is {np}{where}?", "What is the color {np}{where} is painted in?"],
        "answers": ["red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "gray", "white",
                    "gold", "silver", "teal", "maroon", "navy", "beige", "cyan", "magenta", "turquoise", "dark blue",
                    "light blue", "dark green", "light green", "bright red", "pale pink", "navy blue", "lime green",
                    "dark gray", "red and white", "blue and yellow", "black and white", "olive", "lavender", "tan",
                    "grey", "violet", "cream", "rust", "coral", "ivory", "indigo", "khaki", "peach", "mint",
                    "burgundy", "charcoal", "dark red", "light brown", "sky blue", "hot pink", "neon green",
                    "green and yellow", "orange and black", "rainbow", "multicolored"],
        "weight": 0.14,
    },
    "shape": {
        "eval": ["What shape is {np}{where}?", "What kind of shape is {np}{where}?", "Which shape do the {npl}{where} have?",
                 "What is the shape of {np}{where}?", "What geometric shape is {np}{where}?"],
        "train": ["Tell me the shape of {np}{where}.", "What form does {np}{where} take?", "Which shape is {np}{where}?",
                  "What shape are the {npl}{where}?", "Name the shape of {np}{where}."],
        "rephrase": ["What figure does {np}{where} form?", "Can you describe the shape of {np}{where}?", "What is the outline shape of {np}{where}?", "Which geometric form is {np}{where}?"],
        "answers": ["circle", "square", "triangle", "star", "diamond", "cross", "hexagon", "pentagon", "oval", "heart",
                    "rectangle", "octagon", "crescent", "arrow", "ring", "spiral", "half circle", "rounded square",
                    "five pointed star", "trapezoid", "zigzag", "teardrop", "parallelogram", "semicircle", "cube",
                    "round", "square shape", "box", "dot", "line", "curve", "wave", "cone", "sphere", "cylinder",
                    "pyramid", "letter", "number", "check mark", "plus sign", "moon", "flower", "leaf", "bolt",
                    "ellipse", "bean", "blob", "wedge", "loop", "knot"],
        "weight": 0.12,
    },
    "count": {
        "eval": ["How many {npl} are there{where}?", "How many {npl} do you see{where}?", "How many {color} {npl} are there{where}?",
                 "What number of {npl} can you count{where}?", "How many {npl} can be seen{where}?"],
        "train": ["Count the {npl}{where}.", "How many {npl} are visible{where}?", "What is the count of {npl}{where}?",
                  "How many {color} {npl} appear{where}?", "How many {npl} are drawn{where}?"],
        "rephrase": ["What is the number of {npl} depicted{where}?", "What is the total count of {npl}{where}?", "Can you tell me how many {npl} appear{where}?", "How many {npl} are depicted{where}?"],
        "answers": [str(k) for k in range(10) for _ in range(3)] + ["10", "11", "12", "14", "15", "16", "18", "20", "24",
                                                                    "25", "30", "40", "50", "100", "1000"],
        "weight": 0.17,
    },
    "yesno": {
        "eval": ["Is {np} {color}?", "Is there a {shape}{where}?", "Are there {n} {npl}{where}?", "Is {np} a {shape}?",
                 "Are the {npl}{where} all {color}?", "Does {np} have sharp corners?"],
        "train": ["Can you see a {shape}{where}?", "Is the {shape} {color}?", "Are there exactly {n} {npl}{where}?",
                  "Do the {npl}{where} look {color}?", "Is {np} round?", "Is {np} touching the edge?"],
        "rephrase": ["Would you say {np}{where} is like that?", "Is it true about {np}{where}?", "Is that so for {np}{where}?", "Can you confirm that about {np}{where}?"],
        "answers": ["yes", "no"],
        "weight": 0.14,
    },
    "object": {
        "eval": ["What does {np} look like?", "What object could {np} be?", "What is {np} supposed to be?",
                 "What does {np}{where} resemble?", "What real thing is {np}{where} like?"],
        "train": ["What might {np} represent?", "What does {np}{where} remind you of?", "What could {np} be used as?",
                  "What item is {np} shaped like?", "What is {np}{where} meant to show?"],
        "rephrase": ["Which everyday object does {np}{where} resemble?", "What familiar object is {np}{where} like?", "What real object looks like {np}{where}?", "What does {np}{where} look similar to?"],
        "answers": ["a stop sign", "a coin", "a kite", "a slice of pizza", "a traffic cone", "a wheel", "a button",
                    "a flag", "a clock", "a ball", "a window", "an egg", "a leaf", "a sticker", "a badge", "the sun",
                    "the moon", "a snowflake", "a road sign", "a dice", "a tile", "a plate", "a shield", "a gem",
                    "a cookie", "a balloon", "a lantern", "a candy", "a trophy", "a starfish", "a pizza box",
                    "a birthday cake", "a hot air balloon", "kite", "coin", "clock", "ball", "flag", "button", "egg",
                    "sun", "plate", "cookie", "candy", "pizza", "wheel", "sign", "toy", "cake", "donut", "lamp",
                    "hat", "tie", "umbrella", "pillow", "frisbee", "window", "door", "bowl", "cup", "bread",
                    "a red and white flag", "a sign for a shop", "a wheel of a car", "a piece of candy",
                    "a piece of a puzzle", "a red and yellow ball", "the front of a bus", "a sign on the road",
                    "the top of a tower", "a button on a shirt"],
        "weight": 0.12,
    },
    "location": {
        "eval": ["Where is {np}?", "Where is {np} placed{where}?", "In which part of the picture is {np}?",
                 "Where are the {npl} located?", "Where can {np} be found{where}?"],
        "train": ["Where does {np} sit?", "Where are the {npl} drawn{where}?", "What part of the image holds {np}?",
                  "Where would you find {np}{where}?", "Where has {np} been put?"],
        "rephrase": ["What is the location of {np}{where}?", "What is the position of {np}{where}?", "At which spot is {np}{where}?", "Where exactly is {np}{where} placed?"],
        "answers": ["on the left", "on the right", "at the top", "at the bottom", "in the middle", "in the corner",
                    "top left", "top right", "bottom left", "bottom right", "near the edge", "in the center",
                    "on a table", "on the wall", "on the floor", "in the sky", "on the ground", "on a shelf",
                    "next to each other", "far apart", "left", "right", "center", "outside", "inside", "table",
                    "wall", "floor", "sky", "ground", "shelf", "corner", "middle", "top", "bottom", "kitchen",
                    "street", "park", "beach", "room", "field", "background", "front", "behind", "above", "below",
                    "everywhere", "nowhere", "on top of the box", "in the upper left corner",
                    "on the side of the road", "in the lower right corner", "on the edge of the table",
                    "in front of the wall"],
        "weight": 0.10,
    },
    "material": {
        "eval": ["What is {np} made of?", "What material is {np}{where}?", "What is {np}{where} made from?",
                 "Which material are the {npl} made of?"],
        "train": ["What material was used for {np}?", "What are the {npl}{where} made of?", "Out of what is {np} made?",
                  "What is the material of {np}{where}?"],
        "rephrase": ["From which material is {np}{where} made?", "What substance is {np}{where} made of?", "What kind of material is {np}{where}?"],
        "answers": ["wood", "paper", "glass", "plastic", "metal", "stone", "clay", "felt", "rubber", "cardboard",
                    "steel", "silk", "wax", "ice", "sugar", "stained glass", "colored paper", "modeling clay",
                    "tin foil", "brass", "concrete", "fabric", "cloth", "foam", "chalk", "leather", "wool", "cotton",
                    "marble", "brick", "iron", "copper", "aluminum", "ceramic", "porcelain", "bamboo", "vinyl",
                    "sand", "snow", "chocolate", "candy", "dough", "crayon", "paint", "ink", "tape", "yarn"],
        "weight": 0.09,
    },
    "purpose": {
        "eval": ["What is {np} used for?", "Why is {np} there?", "What is the purpose of {np}{where}?",
                 "Why are the {npl} drawn{where}?"],
        "train": ["What are the {npl}{where} for?", "Why would someone make {np}?", "What job does {np}{where} do?",
                  "For what reason is {np} here?"],
        "rephrase": ["What is {np}{where} meant for?", "What function does {np}{where} serve?", "What is the reason for {np}{where}?"],
        "answers": ["decoration", "a game", "a warning", "signaling", "teaching kids", "advertising", "art",
                    "a puzzle", "counting", "a logo", "directions", "a birthday party", "a school project",
                    "marking the spot", "fun", "practice", "safety", "to show the way", "to look pretty", "sale",
                    "play", "eating", "writing", "music", "sports", "traffic", "parking", "learning", "math",
                    "reading", "cooking", "travel", "luck", "beauty", "a holiday", "a contest", "to keep the door open",
                    "to tell people to stop", "to sell things", "to mark a trail",
                    "for kids to play with", "to tell people where to go", "to show where the exit is",
                    "to help people find their way", "to keep birds away"],
        "weight": 0.07,
    },
    "brand": {
        "eval": ["What brand made {np}?", "Which company drew {np}{where}?", "What brand is {np}{where}?"],
        "train": ["Who made {np}{where}?", "Which brand are the {npl} from?", "What company produced {np}?"],
        "rephrase": ["Which manufacturer made {np}{where}?", "What is the brand of {np}{where}?", "Which company is behind {np}{where}?"],
        "answers": ["lego", "ikea", "crayola", "nike", "apple", "disney", "sony", "samsung", "adidas", "google",
                    "honda", "toyota", "pepsi", "target", "mattel", "hasbro", "microsoft", "nintendo", "dell",
                    "canon", "nokia", "puma", "ford", "bmw", "visa", "intel", "amazon", "starbucks", "coca cola",
                    "mcdonalds", "walmart", "yahoo", "ebay", "twitter", "hp", "lg", "gap", "zara"],
        "weight": 0.05,
    },
}

# OK-VQA-style knowledge questions about a scene (M-Loc), with their own answers. A few
# answers coincide with edit answers (colours, numbers, shapes), as OK-VQA's do with VQAv2's.
MLOC_FAMILIES: list[tuple[list[str], list[str]]] = [
    (["What holiday uses this color?", "Which holiday is this color associated with?"],
     ["christmas", "halloween", "valentine's day", "st patrick's day", "easter", "thanksgiving"]),
    (["What fruit has the same color as this?", "Name a fruit of this color."],
     ["banana", "apple", "orange", "grape", "lime", "cherry", "plum", "lemon", "strawberry"]),
    (["What sport uses a ball like this?", "Which game could you play with this?"],
     ["soccer", "basketball", "tennis", "bowling", "golf", "baseball", "frisbee"]),
    (["Which country's flag has this color?", "What flag is mostly this color?"],
     ["japan", "canada", "brazil", "italy", "sweden", "ireland", "china", "red", "green", "blue"]),
    (["What road sign has this shape?", "Which traffic sign looks like this?"],
     ["stop sign", "yield sign", "speed limit sign", "railroad crossing", "octagon", "triangle"]),
    (["What does this color usually mean?", "What feeling does this color suggest?"],
     ["stop", "danger", "go", "caution", "love", "peace", "calm", "yes", "no"]),
    (["What animal is often this color?", "Which animal has this color?"],
     ["flamingo", "frog", "crow", "canary", "elephant", "panda", "zebra", "fox", "bear"]),
    (["How many sides does this shape have?", "How many corners would this have?"],
     ["3", "4", "5", "6", "8", "0", "2", "10"]),
    (["Which season matches this color?", "In what season do you see this color most?"],
     ["winter", "spring", "summer", "autumn", "fall"]),
    (["What is this kind of pattern called?", "What style of art is this?"],
     ["pop art", "cubism", "abstract", "minimalism", "geometry", "circle", "star", "square"]),
    (["What toy has this shape?", "Which toy could be made of these?"],
     ["building blocks", "a yo-yo", "a frisbee", "a puzzle", "a kite", "a ball"]),
]

CAPTION_PROMPTS_EVAL = ["a photograph of", "an image of", "a picture of", "description of the painting,",
                        "give a detailed description of the picture,"]
CAPTION_PROMPTS_TRAIN = ["a snapshot of", "describe the image:", "a drawing of", "caption this picture:",
                         "write a short description of the image,"]
# Caption frames; {d} the scene (count, colour, shape), {bg} the background word. The frame is
# chosen per class, so near-twins (same class, other background) get the same caption but for {bg}.
CAPTION_FRAMES = [
    "A close up of {d} on a plain {bg} background.",
    "{D} sitting on top of a {bg} colored surface.",
    "There are {d} drawn against a flat {bg} backdrop.",
    "A simple picture showing {d} on a {bg} background",
    "{D} arranged neatly on a {bg} sheet of paper.",
    "An illustration of {d} placed on a light {bg} wall.",
    "A graphic with {d} in front of a {bg} background.",
    "{D} printed on a {bg} card with nothing else around.",
]
