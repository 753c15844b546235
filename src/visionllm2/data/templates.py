"""Instruction templates: many paraphrases per task for training, plus held-out ones for testing only."""

from __future__ import annotations

import string
from typing import Literal

import numpy as np

Phrasing = Literal["train", "heldout"]

# Conventions every answer template keeps (the processor names a link by the text between the
# previous separator — , ; : newline or ". " — and the routing token, see processor.link_name):
# - "{links}" is a ready list like "circle[DET], square[DET]"; the text before it ends with a
#   separator so the first link is named by its class alone.
# - "{expr}" (referring) is followed by plain words and then the link, never by a separator, so
#   the [GRD] link is named by a span that holds the expression.
# - "{link}" is a single routing token for [GEN] / [EDIT].

QUESTIONS: dict[str, tuple[str, ...]] = {
    "caption": (
        "Describe the image briefly.",
        "What does this image show?",
        "Write a short caption for the image.",
        "Give a one-sentence description of the picture.",
        "Summarize the contents of the image.",
        "What can you see in this picture?",
        "Provide a concise caption of this image.",
        "Tell me what is in the image.",
        "Caption this image.",
    ),
    "vqa_colour": (
        "What colour is {ref}?",
        "What is the colour of {ref}?",
        "Which colour does {ref} have?",
        "Tell me the colour of {ref}.",
        "What color is {ref}?",
        "{Ref} is which colour?",
        "Can you name the colour of {ref}?",
        "How is {ref} coloured?",
    ),
    "vqa_shape": (
        "What shape is {ref}?",
        "What is the shape of {ref}?",
        "Which shape is {ref}?",
        "Tell me the shape of {ref}.",
        "What kind of shape is {ref}?",
        "Name the shape of {ref}.",
        "{Ref} has which shape?",
        "Identify the shape of {ref}.",
    ),
    "vqa_count": (
        "How many {things} are there?",
        "How many {things} are in the image?",
        "Count the {things} in the picture.",
        "What is the number of {things} in the image?",
        "How many {things} can you see?",
        "Can you count the {things}?",
        "Tell me how many {things} there are.",
        "How many {things} does the image contain?",
    ),
    "vqa_position": (
        "Where is {ref}?",
        "Where is {ref} located in the image?",
        "In which part of the image is {ref}?",
        "Where can {ref} be found?",
        "Tell me where {ref} is.",
        "What is the position of {ref}?",
        "Which region of the picture contains {ref}?",
        "Where in the image is {ref} placed?",
    ),
    "vqa_relation": (
        "Is {a} {rel} {b}?",
        "Is it true that {a} is {rel} {b}?",
        "Does {a} appear {rel} {b}?",
        "Would you say {a} is {rel} {b}?",
        "Is {a} located {rel} {b}?",
        "Can you confirm that {a} is {rel} {b}?",
        "Looking at the image, is {a} {rel} {b}?",
        "Is {a} positioned {rel} {b}?",
    ),
    "vqa_text": (
        "What word is written in the image?",
        "What does the text in the image say?",
        "Read the word in the picture.",
        "Which word appears in the image?",
        "What is written in this image?",
        "Can you read the text in the image?",
        "Tell me the word shown in the picture.",
        "What text can you see in the image?",
    ),
    "pope": (
        "Is there {a_obj} in the image?",
        "Is there {a_obj} in the image? Please answer yes or no.",
        "Does the image contain {a_obj}?",
        "Can you see {a_obj} in this picture?",
        "Is {a_obj} present in the image?",
        "Do you see {a_obj} here?",
        "Does this picture show {a_obj}?",
        "Is {a_obj} visible in the image?",
    ),
    "mc": (
        "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
        "{question}\n{options}\nChoose the correct option.",
        "{question}\n{options}\nWhich option is correct?",
        "{question}\n{options}\nPick the right answer.",
        "Question: {question}\nOptions:\n{options}\nAnswer with a letter.",
        "{question} Choose from the following.\n{options}",
        "{question}\n{options}\nSelect the best answer.",
        "Answer the multiple-choice question.\n{question}\n{options}",
    ),
    "det": (
        "Detect {names} in the image.",
        "Please detect {names}.",
        "Find all instances of {names} in the image.",
        "Locate every {names} in this picture.",
        "Where are the {names}? Give their bounding boxes.",
        "Find and box {names}.",
        "Detect the following categories: {names}.",
        "Can you detect {names} in this image?",
    ),
    "grd": (
        "Where is {expr}?",
        "Please locate {expr} in the image.",
        "Find {expr}.",
        "Give the bounding box of {expr}.",
        "Can you point out {expr}?",
        "Locate {expr}.",
        "Show me where {expr} is.",
        "Ground this expression: {expr}.",
    ),
    "inst_seg": (
        "Segment every instance of {names}.",
        "Please segment each {names} in the image.",
        "Give instance masks for {names}.",
        "Segment all objects of these classes: {names}.",
        "Can you segment each instance of {names}?",
        "Produce an instance segmentation of {names}.",
        "Outline every {names} separately.",
        "Find and segment each {names}.",
    ),
    "sem_seg": (
        "Perform semantic segmentation of {names}.",
        "Segment the image into {names}.",
        "Give a semantic mask for each class: {names}.",
        "Please label the pixels of {names}.",
        "Produce a semantic segmentation map with {names}.",
        "Which pixels belong to {names}? Segment them by class.",
        "Semantic segmentation, classes: {names}.",
        "Paint the regions of {names}.",
    ),
    "ref_seg": (
        "Segment {expr}.",
        "Please segment {expr} in the image.",
        "Give the mask of {expr}.",
        "Can you segment {expr}?",
        "Outline {expr}.",
        "Produce a segmentation mask for {expr}.",
        "Which pixels belong to {expr}?",
        "Cut out {expr}.",
    ),
    "region_caption": (
        "Describe the object in {region}.",
        "What is shown in {region}? Describe it.",
        "Give a short description of {region}.",
        "Can you describe {region}?",
        "Tell me about the object at {region}.",
        "Caption the region {region}.",
        "What does {region} contain? Describe it briefly.",
        "Write a description of the thing in {region}.",
    ),
    "region_recog": (
        "What is the object in {region}?",
        "What category does {region} belong to?",
        "Name the object in {region}.",
        "What is {region}?",
        "Identify the object at {region}.",
        "Which class is the object in {region}?",
        "Classify {region}.",
        "Tell me what {region} is.",
    ),
    "pose": (
        "Detect the keypoints of {names}.",
        "Estimate the pose of every {names}.",
        "Find the keypoints of each {names} in the image.",
        "Please give the skeleton of {names}.",
        "Locate the body joints of {names}.",
        "Perform pose estimation for {names}.",
        "Where are the keypoints of {names}?",
        "Mark the joints of every {names}.",
    ),
    "gen": (
        "Generate an image of {caption}",
        "Draw {caption}",
        "Please create a picture showing {caption}",
        "Make an image: {caption}",
        "Render a scene with {caption}",
        "Can you paint {caption}",
        "Produce an image that depicts {caption}",
        "Create an image of {caption}",
    ),
    "edit_recolour": (
        "Make {ref} {colour}.",
        "Change the colour of {ref} to {colour}.",
        "Recolour {ref} {colour}.",
        "Paint {ref} {colour}.",
        "Turn {ref} {colour}.",
        "Change {ref} so that it is {colour}.",
        "Color {ref} {colour}.",
        "Give {ref} a {colour} colour.",
    ),
    "edit_move": (
        "Move {ref} to the {position}.",
        "Place {ref} at the {position} of the image.",
        "Shift {ref} to the {position}.",
        "Put {ref} in the {position}.",
        "Relocate {ref} to the {position}.",
        "Drag {ref} to the {position}.",
        "Move {ref} over to the {position}.",
        "Reposition {ref} to the {position}.",
    ),
    "edit_add": (
        "Add {a_obj} at the {position}.",
        "Put {a_obj} in the {position}.",
        "Insert {a_obj} at the {position} of the image.",
        "Draw {a_obj} at the {position}.",
        "Place {a_obj} in the {position}.",
        "Add {a_obj} to the {position} of the picture.",
        "Include {a_obj} at the {position}.",
        "Paint {a_obj} at the {position}.",
    ),
    "edit_remove": (
        "Remove {ref}.",
        "Delete {ref} from the image.",
        "Erase {ref}.",
        "Take out {ref}.",
        "Get rid of {ref}.",
        "Remove {ref} from the picture.",
        "Make {ref} disappear.",
        "Clear away {ref}.",
    ),
    "edit_resize": (
        "Make {ref} {bigger}.",
        "Resize {ref} to be {bigger}.",
        "Scale {ref} so it is {bigger}.",
        "Change the size of {ref}: make it {bigger}.",
        "Can you make {ref} {bigger}?",
        "Please make {ref} a bit {bigger}.",
        "Adjust {ref} to be {bigger}.",
        "Render {ref} {bigger}.",
    ),
}

ANSWERS: dict[str, tuple[str, ...]] = {
    "caption": (
        "{caption}",
        "The image shows {caption_lc}",
        "This picture contains {caption_lc}",
        "In the image there is {caption_lc}",
        "It shows {caption_lc}",
        "We can see {caption_lc}",
        "The picture depicts {caption_lc}",
        "There is {caption_lc}",
    ),
    "vqa_colour": (
        "{answer}",
        "It is {answer}.",
        "The colour is {answer}.",
        "{Ref} is {answer}.",
        "{answer}.",
        "It's {answer}.",
        "That object is {answer}.",
        "The answer is {answer}.",
    ),
    "vqa_shape": (
        "{answer}",
        "It is {a_answer}.",
        "The shape is {a_answer}.",
        "{Ref} is {a_answer}.",
        "{answer}.",
        "It's {a_answer}.",
        "That object is {a_answer}.",
        "The answer is {answer}.",
    ),
    "vqa_count": (
        "{answer}",
        "{answer}.",
        "There {are} {answer}.",
        "I count {answer}.",
        "The number is {answer}.",
        "The answer is {answer}.",
        "In total {answer}.",
        "I can see {answer}.",
    ),
    "vqa_position": (
        "{answer}",
        "It is {position_phrase}.",
        "{Ref} is {position_phrase}.",
        "{answer}.",
        "You can find it {position_phrase}.",
        "It's {position_phrase} of the image.",
        "The answer is {answer}.",
        "It sits {position_phrase}.",
    ),
    "vqa_text": (
        "{answer}",
        'The word is "{answer}".',
        'It says "{answer}".',
        "{answer}.",
        'The text reads "{answer}".',
        'I can read "{answer}".',
        "The answer is {answer}.",
        'It is the word "{answer}".',
    ),
    "yes": (
        "Yes",
        "Yes.",
        "Yes, it is.",
        "Yes, that is right.",
        "Yes, indeed.",
        "Yes, I can see it.",
        "Yes, that's correct.",
        "Yes, definitely.",
    ),
    "no": (
        "No",
        "No.",
        "No, it is not.",
        "No, that is not the case.",
        "No, I can't see that.",
        "No, that's not right.",
        "No, not at all.",
        "No, definitely not.",
    ),
    "mc": (
        "{letter}",
        "{letter}.",
        "{letter}. {option}",
        "The answer is {letter}.",
        "({letter}) {option}",
        "Option {letter}.",
        "{letter}: {option}",
        "The correct option is {letter}.",
    ),
    "det": (
        "{links}",
        "Sure: {links}.",
        "Here are the results: {links}.",
        "Detections: {links}.",
        "Sure, {links}.",
        "Found them; {links}.",
        "The detected objects are as follows: {links}.",
        "OK. {links}.",
    ),
    "grd": (
        "OK, {expr} is [GRD].",
        "{Expr} is here [GRD].",
        "Sure, {expr} is at [GRD].",
        "{Expr} is located at [GRD].",
        "I found {expr} at [GRD].",
        "Here is {expr} [GRD].",
        "The location of {expr} is [GRD].",
        "{Expr} [GRD].",
    ),
    "inst_seg": (
        "{links}",
        "Sure: {links}.",
        "Here are the masks: {links}.",
        "Instances: {links}.",
        "Sure, {links}.",
        "Segmented; {links}.",
        "The instance masks are as follows: {links}.",
        "OK. {links}.",
    ),
    "sem_seg": (
        "{links}",
        "Sure: {links}.",
        "Here is the segmentation: {links}.",
        "Classes: {links}.",
        "Sure, {links}.",
        "Done; {links}.",
        "The semantic masks are as follows: {links}.",
        "OK. {links}.",
    ),
    "ref_seg": (
        "OK, {expr} is [GRD].",
        "{Expr} is here [GRD].",
        "Sure, {expr} is segmented as [GRD].",
        "The mask of {expr} is [GRD].",
        "I segmented {expr} as [GRD].",
        "Here is {expr} [GRD].",
        "The pixels of {expr} are [GRD].",
        "{Expr} [GRD].",
    ),
    "region_caption": (
        "{Caption}",
        "It is {caption_lc}.",
        "The region shows {caption_lc}.",
        "{Caption}.",
        "This is {caption_lc}.",
        "I can see {caption_lc} there.",
        "The object is {caption_lc}.",
        "That region contains {caption_lc}.",
    ),
    "region_recog": (
        "{answer}",
        "{answer}.",
        "It is {a_answer}.",
        "This is {a_answer}.",
        "The object is {a_answer}.",
        "It's {a_answer}.",
        "The category is {answer}.",
        "That is {a_answer}.",
    ),
    "pose": (
        "{links}",
        "Sure: {links}.",
        "Here are the keypoints: {links}.",
        "Poses: {links}.",
        "Sure, {links}.",
        "Done; {links}.",
        "The keypoints are as follows: {links}.",
        "OK. {links}.",
    ),
    # The answer restates the request before the link, as perception answers name what each link
    # is for: a one-shape text-to-image specialist whose answers did not ("Here is the image
    # [GEN].") drew the requested colour in 21-27% of its images and its decoder ignored the
    # condition; restating, 71% and it used it (benchmarks/README.md, "What of the prompt ...").
    "gen": (
        "Here is {caption} [GEN].",
        "Sure: {caption} [GEN].",
        "Here it is, {caption} [GEN].",
        "I generated {caption} [GEN].",
        "The picture of {caption} is ready [GEN].",
        "{Caption} [GEN]",
        "Done: {caption} [GEN].",
        "Here is what I drew: {caption} [GEN].",
    ),
    "edit": (
        "Here is the edited image [EDIT].",
        "Sure [EDIT].",
        "Done [EDIT].",
        "I edited the image [EDIT].",
        "The edit is ready [EDIT].",
        "[EDIT]",
        "Here it is [EDIT].",
        "Edited as requested [EDIT].",
    ),
}

# Phrasings never used for training: a test split built with these measures whether the model
# follows instructions or memorised the training sentences.
HELDOUT_QUESTIONS: dict[str, tuple[str, ...]] = {
    "caption": ("Could you explain what this photo depicts in one sentence?", "Sum up this picture for me."),
    "vqa_colour": ("Name the hue of {ref}.", "Which paint was used for {ref}?"),
    "vqa_shape": ("Which geometric figure is {ref}?", "How would you call the form of {ref}?"),
    "vqa_count": ("What's the total of {things} visible?", "Give me the tally of {things}."),
    "vqa_position": ("Which area of the frame holds {ref}?", "Say where {ref} sits in the frame."),
    "vqa_relation": ("Am I right that {a} lies {rel} {b}?", "Check whether {a} sits {rel} {b}."),
    "vqa_text": ("Spell out the word printed here.", "Which letters are printed in this picture?"),
    "pope": ("Would you find {a_obj} in this photo?", "Is any {obj} depicted here?"),
    "mc": (
        "Pick one.\n{question}\n{options}\nReply with the letter only.",
        "{question}\nChoices:\n{options}\nYour letter?",
    ),
    "det": ("Mark the boxes around each {names}.", "Spot all {names} and box them."),
    "grd": ("Which region matches {expr}?", "Box the one described as {expr}."),
    "inst_seg": ("Mask each separate {names}.", "Separate every single {names} with its own mask."),
    "sem_seg": ("Colour-code the pixels by class among {names}.", "Split the picture by category: {names}."),
    "ref_seg": ("Mask out the one described as {expr}.", "Highlight the pixels of {expr}."),
    "region_caption": ("Talk about what sits at {region}.", "Explain the item marked by {region}."),
    "region_recog": ("Which category is marked by {region}?", "Label the item at {region}."),
    "pose": ("Trace the skeletons of {names}.", "Give me the joint positions of all {names}."),
    "gen": ("Picture for me {caption}", "Synthesise a scene: {caption}"),
    "edit_recolour": ("Switch the colour of {ref} into {colour}.", "Let {ref} become {colour}."),
    "edit_move": ("Slide {ref} towards the {position}.", "Let {ref} end up at the {position}."),
    "edit_add": ("Let there be {a_obj} at the {position}.", "Drop {a_obj} into the {position}."),
    "edit_remove": ("Wipe {ref} out.", "Let {ref} vanish."),
    "edit_resize": ("Let {ref} grow or shrink to be {bigger}.", "Rescale {ref}, {bigger} please."),
}

HELDOUT_ANSWERS: dict[str, tuple[str, ...]] = {
    "caption": ("Sure. {caption}", "In short: {caption}"),
    "vqa_colour": ("I would say {answer}.", "Its colour: {answer}."),
    "vqa_shape": ("I would say {a_answer}.", "Its shape: {answer}."),
    "vqa_count": ("I would say {answer}.", "Count: {answer}."),
    "vqa_position": ("I would say {position_phrase}.", "Its place: {answer}."),
    "vqa_text": ("I would read {answer}.", "Text: {answer}."),
    "yes": ("Yes, I would say so.", "Yes, correct."),
    "no": ("No, I would say not.", "No, incorrect."),
    "mc": ("I pick {letter}.", "Letter: {letter}."),
    "det": ("Boxes follow: {links}.", "Result; {links}"),
    "grd": ("I would say {expr} lies at [GRD].", "So {expr} sits at [GRD]."),
    "inst_seg": ("Masks follow: {links}.", "Result; {links}"),
    "sem_seg": ("Classes follow: {links}.", "Result; {links}"),
    "ref_seg": ("I would say {expr} covers [GRD].", "So {expr} fills [GRD]."),
    "region_caption": ("I would say {caption_lc}.", "Description: {caption}."),
    "region_recog": ("I would say {a_answer}.", "Category: {answer}."),
    "pose": ("Joints follow: {links}.", "Result; {links}"),
    "gen": ("As requested, {caption} [GEN].", "Generated {caption} [GEN]."),
    "edit": ("As requested [EDIT].", "Changed [EDIT]."),
}

# Appended to some short-answer questions (LLaVA-1.5 practice); the answer is then the bare word.
SHORT_ANSWER_SUFFIXES: tuple[str, ...] = (
    "Answer the question using a single word or phrase.",
    "Answer with one word or a short phrase.",
    "Reply with a single word.",
)


def _fields_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _fill(template: str, key: str, fields: dict[str, object]) -> str:
    """Format ``template``; ``{Name}`` is the value of ``name`` with its first letter upper-cased."""
    values = dict(fields)
    for name in _fields_of(template):
        if name not in values and name[:1].isupper() and name.lower() in fields:
            values[name] = _capitalize(str(fields[name.lower()]))
    missing = _fields_of(template) - set(values)
    if missing:
        raise ValueError(f"template {template!r} of {key!r} needs field(s) {sorted(missing)}; pass them")
    return template.format(**values)


def _pick(table: dict[str, tuple[str, ...]], key: str, rng: np.random.Generator) -> str:
    if key not in table:
        raise ValueError(f"no templates for {key!r}; known: {sorted(table)}")
    options = table[key]
    return options[int(rng.integers(len(options)))]


def question(key: str, rng: np.random.Generator, *, phrasing: Phrasing = "train", **fields: object) -> str:
    """A random question phrasing of task ``key`` filled with ``fields``."""
    table = QUESTIONS if phrasing == "train" else _checked_heldout(HELDOUT_QUESTIONS, phrasing)
    return _fill(_pick(table, key, rng), key, fields)


def answer(key: str, rng: np.random.Generator, *, phrasing: Phrasing = "train", **fields: object) -> str:
    """A random answer phrasing of ``key`` filled with ``fields``. Nothing is re-cased behind
    the template's back (a link's name must stay as given): ``{Name}`` capitalises a field."""
    table = ANSWERS if phrasing == "train" else _checked_heldout(HELDOUT_ANSWERS, phrasing)
    return _fill(_pick(table, key, rng), key, fields)


def _checked_heldout(table: dict[str, tuple[str, ...]], phrasing: str) -> dict[str, tuple[str, ...]]:
    if phrasing != "heldout":
        raise ValueError(f"phrasing must be 'train' or 'heldout', got {phrasing!r}")
    return table


def article(noun: str) -> str:
    """``"a red circle"`` / ``"an orange star"``."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def join_names(names: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    if not names:
        raise ValueError("join_names needs at least one name")
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def link_list(names: list[str], token: str) -> str:
    """``["circle", "square"]``, ``"[DET]"`` -> ``"circle[DET], square[DET]"``."""
    return ", ".join(f"{n}{token}" for n in names)
